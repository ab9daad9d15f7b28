"""Writes deploy/tools/gateway-api.schema.json from Gateway API CRD files.

    python extract_gateway_api_schema.py VERSION experimental-install.yaml > gateway-api.schema.json

Takes the OpenAPI schema of each v1 kind that InstantChat's manifests use (HTTPRoute, Gateway)
from the CRDs of a Gateway API release (its `experimental-install.yaml`, or the CRD files of its
config/crd/experimental/; the experimental channel is a superset of the standard one), without
descriptions and CEL rules, so that scripts/validate-deploy can check the manifests against the
current API offline: npm's @kubernetes-models/gateway-api lags behind it (its schema still has
fields that Gateway API has since removed). The schemas are Gateway API's (Apache License 2.0,
The Kubernetes Authors).
"""

import json
import sys

import yaml

KINDS = {"HTTPRoute", "Gateway"}


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in ("description", "x-kubernetes-validations")}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main() -> None:
    version, *files = sys.argv[1:]
    out = {"gatewayApiVersion": version,
           "source": "Gateway API CRDs (experimental channel), Apache License 2.0, The Kubernetes Authors",
           "schemas": {}}
    for path in files:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                kind = doc["spec"]["names"]["kind"]
                if kind not in KINDS:
                    continue
                for v in doc["spec"]["versions"]:
                    if v["name"] == "v1":
                        out["schemas"][f"{doc['spec']['group']}/v1/{kind}"] = strip(v["schema"]["openAPIV3Schema"])
    json.dump(out, sys.stdout, indent=None, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
