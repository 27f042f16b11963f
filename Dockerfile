# Lethe: API and GPU worker share one image.
#   docker build -t lethe .                                  # small CPU image (default)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t lethe:cuda .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lethe
ENV PATH=/opt/lethe/bin:$PATH
# torch first, from the chosen index (CPU or CUDA build), pinned like pyproject.toml
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install -c constraints.txt .

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --create-home --uid 10001 lethe \
    && mkdir -p /data && chown lethe:lethe /data
COPY --from=build /opt/lethe /opt/lethe
ENV PATH=/opt/lethe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LETHE_DATA_DIR=/data \
    LETHE_ENVIRONMENT=production
USER lethe
WORKDIR /home/lethe
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez').status != 200)"
CMD ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
