# The service image: `newsletter serve` by default; the same image runs `newsletter worker` and
# `newsletter migrate` (see docker-compose.yml).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APP_ENV=production

WORKDIR /srv/newsletter

# Dependencies first (a layer that changes only with pyproject.toml), then the code.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py && pip install . && pip uninstall -y newsletter

COPY alembic.ini ./
COPY alembic ./alembic
COPY email_templates ./email_templates
COPY app ./app
# Editable: migrations and email templates are found next to the code (app/config.py ROOT).
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /srv/newsletter --shell /usr/sbin/nologin newsletter \
    && mkdir -p var && chown newsletter:newsletter var

USER newsletter
EXPOSE 8000
CMD ["newsletter", "serve", "--host", "0.0.0.0", "--port", "8000"]
