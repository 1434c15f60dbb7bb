# llm-router: docker build -t llm-router . && docker run -p 8080:8080 -v $PWD/config.yaml:/app/config.yaml llm-router
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY router ./router
RUN pip install --no-cache-dir . \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin router

USER 1000:1000
EXPOSE 8080
# The image has no curl; the health check uses the Python that runs the router.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
# Without a mounted /app/config.yaml the demo config runs; it then needs LLM_ROUTER_API_KEY.
CMD ["llm-router", "serve", "--host", "0.0.0.0", "--port", "8080"]
