# SPDX-License-Identifier: Apache-2.0
# mipruner-vllm for NVIDIA GPUs, on the official vLLM OpenAI image (CUDA; vLLM, torch,
# transformers and Triton inside). The CPU image is Dockerfile.cpu.
#   docker build -t mipruner-vllm .
#   docker run --gpus all --ipc=host -p 8000:8000 -v ~/.cache/huggingface:/cache/huggingface \
#     mipruner-vllm --model Qwen/Qwen2.5-VL-7B-Instruct
# With no --model the server serves the embedded demo model (trained on coloured shapes only).
# --ipc=host (or --shm-size=...): vLLM's processes share tensors through /dev/shm, and Docker's
# default 64 MiB is too small for the engine to start.
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/mipruner-vllm
COPY pyproject.toml README.md ./
COPY mipruner_vllm ./mipruner_vllm
COPY kernels ./kernels
COPY server ./server
# vLLM, torch and transformers come from the base image; install only what it lacks.
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && python3 -m pip install --no-cache-dir "pydantic-settings>=2.2" "typer>=0.12" \
    "confusable-homoglyphs>=3.3" \
 && python3 -c "import mipruner_vllm.plugin, mipruner_vllm.server.launcher"

# One cache volume for both images: Hugging Face downloads and the demo checkpoint.
ENV HF_HOME=/cache/huggingface \
    MIPRUNER_CACHE_DIR=/cache/mipruner-vllm
EXPOSE 8000
ENTRYPOINT ["mipruner-vllm", "serve", "--host", "0.0.0.0", "--port", "8000"]
