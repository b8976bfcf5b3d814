from flask import Flask, request

app = Flask(__name__)
print("meca-init-done", flush=True)


import humanize


@app.route("/", methods=["POST"])
def entry():
    return humanize.naturalsize(int(request.json["bytes"]), binary=True)
