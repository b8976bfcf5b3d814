from flask import Flask, request

app = Flask(__name__)
print("meca-init-done", flush=True)


import subprocess


@app.route("/", methods=["POST"])
def entry():
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    return "gpus: %d" % len(out.stdout.splitlines())
