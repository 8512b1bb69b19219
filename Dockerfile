FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home vector && mkdir -p /data/training_data && chown vector /data/training_data
USER vector
ENV VECTOR_TASK_ROOT=/data/training_data
CMD ["celery", "-A", "worker", "worker", "-l", "info", "-E"]
