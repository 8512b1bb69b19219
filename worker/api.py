"""The HTTP API: the seeds' backup endpoint and the extensions they list, on Flask.

Routes parse, check, call one function and wrap the answer in the envelope of
`worker/envelope.py`. A run goes through the pipeline's enqueue-once path and run lock
and executes on the workers, never in the web process.
"""

from __future__ import annotations

import ipaddress

from flask import Flask, Response, jsonify, request, send_file
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from common.catalog import find_set, list_sets, open_set_file
from common.config import ApiSettings, Settings, load_api_settings, load_settings
from common.drill import last_drill
from common.exceptions import ConfigurationError, VerifyError
from common.pins import read_pin
from common.redis_conn import redis_client
from worker import api_http, envelope, metrics
from worker.api_http import reply
from worker.api_restore import RestoreRoutes
from worker.api_runs import RunRoutes
from worker.openapi import PREFIX, openapi_spec


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(
    settings: Settings | None = None, api: ApiSettings | None = None, any_host: bool = False
) -> Flask:
    settings = settings or load_settings()
    api = api or load_api_settings()
    web = Flask(__name__)
    web.config["MAX_CONTENT_LENGTH"] = api.max_body_bytes
    web.json.sort_keys = False
    web.json.ensure_ascii = False
    api_http.install(web, settings, api, any_host)
    RunRoutes(settings, api).register(web)
    RestoreRoutes(settings).register(web)

    @web.get(f"{PREFIX}/backups")
    def backups():
        sets = list_sets(settings)
        return reply(envelope.success_response({"response": f"{len(sets)} backup set(s)", "sets": sets}))

    @web.get(f"{PREFIX}/backups/<set_name>")
    def backup_set(set_name: str):
        try:
            ref, manifest = find_set(settings, set_name)
        except VerifyError as exc:
            return reply(envelope.not_found_response(str(exc)[:300]))
        pin = read_pin(ref.storage, ref.timestamp)
        data = {"response": ref.manifest, "set": set_name, "pinned": pin is not None, "pin": pin}
        return reply(envelope.success_response({**data, "manifest": manifest}))

    @web.get(f"{PREFIX}/backups/<set_name>/files/<file_name>")
    def download(set_name: str, file_name: str):
        try:
            opened, info, sha256 = open_set_file(settings, set_name, file_name)
        except VerifyError as exc:
            return reply(envelope.not_found_response(str(exc)[:300]))
        # The file that was checked and opened is the one sent, from any storage.
        sent = send_file(
            opened,
            as_attachment=True,
            download_name=file_name,
            last_modified=info.mtime,
            etag=sha256 or f"{info.mtime}-{info.size}",
            conditional=False,
        )
        sent.content_length = info.size
        try:
            return sent.make_conditional(request, accept_ranges=True, complete_length=info.size)
        except RequestedRangeNotSatisfiable:
            opened.close()
            raise

    @web.get(f"{PREFIX}/drill")
    def drill():
        last = last_drill(redis_client(settings.runs.redis_url))
        summary = "no restore drill has run" if last is None else f"restore drill {last['state']}"
        return reply(envelope.success_response({"response": summary, "drill": last}))

    scraped = metrics.registry(settings)

    @web.get("/metrics")
    def prometheus():
        """Prometheus text (with API_TOKEN set, scrape with that bearer token)."""
        return Response(generate_latest(scraped), mimetype=CONTENT_TYPE_LATEST)

    @web.get("/api/v0/openapi.json")
    def openapi():
        return jsonify(openapi_spec())

    return web


def serve(host: str, port: int, threads: int = 8, insecure_no_auth: bool = False) -> None:
    """Serve with waitress, a production WSGI server (the same in compose). Without
    `API_TOKEN` only on a loopback address, unless `insecure_no_auth` says otherwise."""
    from waitress import serve as waitress_serve

    from worker.logs import configure_api_logging

    configure_api_logging()
    try:
        api = load_api_settings()
        if api.token is None and not is_loopback(host) and not insecure_no_auth:
            raise ConfigurationError(
                f"refusing to serve the API on {host} without API_TOKEN: anyone who reaches it could "
                "empty the store; set API_TOKEN, listen on 127.0.0.1, or pass --insecure-no-auth"
            )
        web = create_app(api=api, any_host=insecure_no_auth)
    except ConfigurationError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    waitress_serve(web, host=host, port=port, threads=threads, ident="pgvector-backup")
