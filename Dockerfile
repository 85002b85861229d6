FROM python:3.11-slim-bookworm

# docker-registry only serves the embedded default (no CNR_OCI_UPSTREAM).
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker-registry \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cnr_oci ./cnr_oci
COPY schemas ./schemas
RUN pip install --no-cache-dir . && mkdir /data && chown nobody /data

# 0.0.0.0 is safe: with the embedded registry (no CNR_OCI_UPSTREAM), serve refuses to start
# until there is a /data/htpasswd (users of the embedded registry), made with
#   docker run --rm -it -v cnr-data:/data --entrypoint cnr-oci IMAGE user add NAME
# unless CNR_OCI_INSECURE_OPEN=true says to serve it open on purpose (README, Security defaults).
ENV CNR_OCI_HOST=0.0.0.0 \
    CNR_OCI_PORT=5000 \
    CNR_OCI_DATA_DIR=/data
VOLUME /data
EXPOSE 5000
USER nobody
ENTRYPOINT ["cnr-oci", "serve"]
