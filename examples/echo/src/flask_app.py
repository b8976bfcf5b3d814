from flask import Flask, request

app = Flask(__name__)
print("meca-init-done", flush=True)


@app.route("/", methods=["POST"])
def entry():
    return request.json["input"]
