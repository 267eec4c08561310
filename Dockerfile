FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY billing ./billing
RUN pip install --no-cache-dir .
EXPOSE 8001 8002
CMD ["billing", "serve", "subscriptions"]
