from flask import Flask, request

app = Flask(__name__)
print("meca-init-done", flush=True)


import json
import re
from collections import Counter


@app.route("/", methods=["POST"])
def entry():
    words = re.findall(r"[\w']+", request.json["text"].lower())
    top = Counter(words).most_common(int(request.json.get("top", 3)))
    return json.dumps({"words": len(words), "top": top}, ensure_ascii=False)
