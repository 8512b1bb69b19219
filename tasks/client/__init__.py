"""The client side of a run: send it once (`enqueue`), read where it stands (`runs`,
`progress`), follow it to its end (`polling`), cancel it. It sends tasks by name
(`tasks/names.py`) through the app (`tasks/app.py`) and never imports a task definition;
`tasks/pipeline.py` re-exports what the pipeline imports."""
