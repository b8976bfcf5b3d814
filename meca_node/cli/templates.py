"""Task folder templates for ``meca-node task init`` (the guide's Flask echo app)."""

from __future__ import annotations

PYTHON = {
    "Dockerfile": """\
FROM python:3.9-slim
WORKDIR /app
COPY src/requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r requirements.txt
COPY src/ /app/
EXPOSE 8080
CMD ["python", "-m", "flask", "--app", "flask_app.py", "run", "--host=0.0.0.0", "--port=8080"]
""",
    "src/flask_app.py": """\
from flask import Flask, request

app = Flask(__name__)

# meca-node waits for this line, then retries the first request until the port answers
print("meca-init-done", flush=True)


@app.route("/", methods=["POST"])
def entry():
    return request.json["input"]
""",
    "src/requirements.txt": "flask\n",
    "description.txt": "Echo: replies with the value of the 'input' field of the JSON body.\n",
    "name.txt": "{name}\n",
    "example_input.bin": '{"input": "hello meca"}',
    "example_output.bin": "hello meca",
    "config.json": '{\n  "resource": {"cpu": 0.5, "mem": 128, "use_gpu": false, "gpu_count": 0}\n}\n',
}

TEMPLATES = {"python": PYTHON}
