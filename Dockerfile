# SPDX-License-Identifier: Apache-2.0
# mipruner-vllm on top of the official vLLM OpenAI image (CUDA; vLLM, torch, transformers inside).
#   docker build -t mipruner-vllm .
#   docker run --gpus all -p 8000:8000 mipruner-vllm --model Qwen/Qwen2.5-VL-7B-Instruct
# With no --model the server builds and serves the tiny demo checkpoint (meaningless answers).
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/mipruner-vllm
COPY pyproject.toml README.md ./
COPY mipruner_vllm ./mipruner_vllm
COPY kernels ./kernels
COPY server ./server
# vLLM, torch and transformers come from the base image; install only what it lacks.
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && python3 -m pip install --no-cache-dir "pydantic-settings>=2.2" "typer>=0.12" \
 && python3 -c "import mipruner_vllm.plugin, mipruner_vllm.server.launcher"

ENV MIPRUNER_CACHE_DIR=/var/cache/mipruner-vllm
EXPOSE 8000
ENTRYPOINT ["mipruner-vllm", "serve", "--host", "0.0.0.0", "--port", "8000"]
