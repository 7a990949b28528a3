# The hosted demo as an image: CPU-only torch, the shipped checkpoints, a non-root user, Streamlit on $PORT.
#   docker build -t rnn-chat . && docker run -p 8501:8501 rnn-chat      (then open http://localhost:8501)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8501

RUN useradd --create-home --uid 10001 app
WORKDIR /app

# requirements.txt names the PyTorch CPU wheel index, so torch comes without CUDA (about 200 MB, not GBs)
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY --chown=app:app .streamlit/ .streamlit/
COPY --chown=app:app nlp/ nlp/
COPY --chown=app:app webapp/ webapp/
COPY --chown=app:app checkpoints/ checkpoints/
COPY --chown=app:app Procfile ./

USER 10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ.get('PORT', '8501'), timeout=4)"]
# the Procfile's command (Streamlit, with the models loaded while it starts); sh expands $PORT, exec makes it
# PID 1 so it gets the stop signal
CMD ["sh", "-c", "exec python -m webapp --server.port=${PORT} --server.address=0.0.0.0 --server.headless=true --browser.gatherUsageStats=false"]
