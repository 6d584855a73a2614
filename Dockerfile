# syntax=docker/dockerfile:1
#
# rcache in containers. Every stage runs the repository's own scripts, the same ones CI runs.
#
#   docker build --target test -t rcache-test .   # CI in a container: .ci/run (fmt, clippy,
#                                                 # shellcheck, all tests, vendored + Debian nginx)
#   docker build -t rcache .                      # runtime image: Debian's nginx + the module's package
#   docker run --rm -p 8080:8080 rcache           # the demo walkthrough, then keeps serving
#                                                 # on :8080 (Ctrl-C / docker stop ends it)
#
# Building the runtime image does not run the tests (BuildKit builds only the stages the
# target needs); build the `test` target for that.

ARG RUST_VERSION=1.95.0

# ---- toolchain: Debian 12 + rustup + the project's packages, like the CI machine -----------
FROM debian:bookworm AS toolchain
ARG RUST_VERSION
ENV DEBIAN_FRONTEND=noninteractive \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --no-modify-path --profile minimal \
            --default-toolchain "${RUST_VERSION}" --component rustfmt --component clippy \
    && rustc --version && cargo --version
WORKDIR /src
# The packages in a layer of their own, keyed on the script alone: editing the sources
# does not redo apt. (--lint: shellcheck, which .ci/run uses.)
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh --lint
COPY . .

# ---- test: exactly what CI runs -------------------------------------------------------------
FROM toolchain AS test
RUN bash .ci/run

# ---- build: the Debian package for Debian's nginx 1.22 (dh_nginx, nginx-dev's tree) ---------
FROM toolchain AS build
RUN deb=$(scripts/build-deb.sh | tail -n 1) \
    && install -D -m 0644 "$deb" /out/libnginx-mod-http-rcache.deb

# ---- runtime: Debian's nginx + memcached + the demo -----------------------------------------
FROM debian:bookworm-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /opt/rcache
COPY scripts/install-deps.sh scripts/install-deps.sh
# --runtime: nginx, memcached, python3, curl (no compilers). The packaged daemons are not
# started; the demo starts its own.
# The module is installed as a Debian user installs it: the package from the build stage
# (/usr/lib/nginx/modules/ngx_http_rcache_module.so, enabled in /etc/nginx/modules-enabled/;
# its nginx-reload trigger only reloads an nginx that runs).
COPY --from=build /out/libnginx-mod-http-rcache.deb /tmp/libnginx-mod-http-rcache.deb
RUN scripts/install-deps.sh --runtime \
    && apt-get install -y --no-install-recommends /tmp/libnginx-mod-http-rcache.deb \
    && rm -rf /var/lib/apt/lists/* /tmp/libnginx-mod-http-rcache.deb
COPY scripts/demo.sh scripts/demo.sh
COPY demo/ demo/
COPY nginx-conf/ nginx-conf/
ENV RCACHE_SKIP_DEPS=1 \
    RCACHE_NGINX=/usr/sbin/nginx \
    RCACHE_MODULE=/usr/lib/nginx/modules/ngx_http_rcache_module.so \
    RCACHE_DEMO_PORT=8080
EXPOSE 8080
# demo.sh stops nginx, the app and memcached on SIGTERM (docker stop) and SIGINT (Ctrl-C).
CMD ["scripts/demo.sh", "--foreground"]
