# The image deploy/k8s runs (ghcr.io/tidings/tidings): `tidings` on PATH, the catalog at /app/catalog.
# tests/integration/test_image.py builds the wheel from exactly the files copied here and runs the
# installed CLI from it; this machine has no Docker engine to build the image itself.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tidings tidings
COPY processors processors
COPY gateways gateways
COPY projections projections
COPY schemas schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tidings
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels tidings && rm -rf /wheels
COPY catalog /app/catalog
WORKDIR /app
USER 10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["tidings"]
CMD ["--help"]
