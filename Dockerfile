# syntax=docker/dockerfile:1
#
# rcache in containers. Every stage runs the repository's own scripts, the same ones CI runs.
#
#   docker build --target test -t rcache-test .   # CI in a container: .ci/run (fmt, clippy,
#                                                 # shellcheck, all tests, vendored + Debian nginx)
#   docker build -t rcache .                      # runtime image: Debian's nginx + the module
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

# ---- build: the module for Debian's nginx 1.22 (nginx-dev's tree + configure flags) ---------
FROM toolchain AS build
RUN module=$(scripts/build-for-installed-nginx.sh | tail -n 1) \
    && install -D -m 0644 "$module" /out/librcache.so

# ---- runtime: Debian's nginx + memcached + the demo -----------------------------------------
FROM debian:bookworm-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /opt/rcache
COPY scripts/install-deps.sh scripts/install-deps.sh
# --runtime: nginx, memcached, python3, curl (no compilers). The packaged daemons are not
# started; the demo starts its own.
RUN scripts/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/*
# Where Debian keeps dynamic modules; load it with `load_module /usr/lib/nginx/modules/librcache.so;`.
COPY --from=build /out/librcache.so /usr/lib/nginx/modules/librcache.so
COPY scripts/demo.sh scripts/demo.sh
COPY demo/ demo/
COPY nginx-conf/ nginx-conf/
ENV RCACHE_SKIP_DEPS=1 \
    RCACHE_NGINX=/usr/sbin/nginx \
    RCACHE_MODULE=/usr/lib/nginx/modules/librcache.so \
    RCACHE_DEMO_PORT=8080
EXPOSE 8080
# demo.sh stops nginx, the app and memcached on SIGTERM (docker stop) and SIGINT (Ctrl-C).
CMD ["scripts/demo.sh", "--foreground"]
