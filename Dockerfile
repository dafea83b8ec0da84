# One image for every ledgerq process: api, worker, beat, flower, migrate.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY api ./api
COPY worker ./worker
COPY domain ./domain
COPY migrations ./migrations
# The `ledgerq` command; bench/ and devserver/ only answer that their extras are not installed.
COPY cli ./cli
COPY bench ./bench
COPY devserver ./devserver
COPY alembic.ini ./
RUN uv sync --frozen --no-dev
# In a container the servers listen on every interface; publishing a port is the compose file's choice.
ENV PATH="/app/.venv/bin:$PATH" LEDGERQ_API_HOST=0.0.0.0 LEDGERQ_FLOWER_HOST=0.0.0.0 LEDGERQ_LOG_FORMAT=json
RUN useradd --create-home ledgerq
USER ledgerq
EXPOSE 8000 5555
CMD ["ledgerq", "api"]
