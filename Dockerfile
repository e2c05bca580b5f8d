# The explorer as a public demo in a container (docs/hosting.md). Everything slow happens
# here, once: the kernels are compiled and CIFAR-10 is downloaded by
# `python -m tokenlearner provision`, so a visitor never waits for either.
FROM python:3.11-slim

# packages.txt: the C++ compiler for the native kernels (Streamlit Community Cloud reads
# the same file).
COPY packages.txt /tmp/packages.txt
RUN apt-get update \
    && xargs -a /tmp/packages.txt apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/*

COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

# The code belongs to root and the server runs as a user who can write only its home:
# the runs folder, the data and the kernel cache.
RUN useradd --create-home --uid 10001 explorer
COPY . /app
WORKDIR /app
USER explorer
ENV TOKENLEARNER_DEMO=1 \
    TOKENLEARNER_RUNS_DIR=/home/explorer/runs \
    TF_CPP_MIN_LOG_LEVEL=3 \
    PORT=8501
RUN python -m tokenlearner provision --download

EXPOSE 8501
# Hosts give the port in $PORT.
CMD python -m tokenlearner serve --server.port "$PORT" --server.address 0.0.0.0 --server.headless true
