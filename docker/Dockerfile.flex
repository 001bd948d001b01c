# syntax=docker/dockerfile:1
#
# bertbeam as a Dataflow Flex Template: a worker image (docker/Dockerfile.gpu or .cpu) plus
# Google's Flex Template launcher. One image serves as the template's launcher and as the
# job's workers (pass it as sdk_container_image too), so both run the same Python, Beam,
# torch and bertbeam. Build from the repository root, after the worker image:
#
#   docker build -f docker/Dockerfile.flex --build-arg WORKER_IMAGE="$CPU_IMAGE" \
#       -t "$FLEX_IMAGE" . && docker push "$FLEX_IMAGE"
#
# The launcher runs pipelines/flex_template.py, which starts `bertbeam embed|label ...
# --no-wait`: the job writes _SUMMARY.json and _REPORT.html in its last stage, and the
# launcher exits once the job is submitted, as Flex Templates require.
# PYTHON_VERSION must be the worker image's (docker/Dockerfile.gpu, ARG PYTHON_VERSION).

ARG WORKER_IMAGE=bertbeam-cpu
ARG PYTHON_VERSION=311
# Google documents the launcher base as :latest; for a reproducible build pin one of its dated
# tags (gcloud container images list-tags gcr.io/dataflow-templates-base/python311-template-launcher-base).
# hadolint ignore=DL3007
FROM gcr.io/dataflow-templates-base/python${PYTHON_VERSION}-template-launcher-base:latest AS launcher

FROM ${WORKER_IMAGE}
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
# pipelines/ is installed in the worker image at /src/pipelines.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/src/pipelines/flex_template.py
# The worker image's ENTRYPOINT (Beam's boot) stays: Dataflow starts the launcher itself.
