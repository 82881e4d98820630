"""RBAC in deploy/rbac.yaml equals what the code uses (derived from the source, statically):
each `Informer(api, <Kind>)` needs list + watch on the kind's resource, each
`patch_status(api, "<Kind>", ...)` or `patch(api, "<Kind>", ..., status=True)` needs patch on
`<resource>/status`, each `get(api, "<Kind>", ...)` get on the resource; any other API call in a
component (create/replace/patch of the main resource/delete/list through knet.kube.client) fails
this test until it is accounted for here and granted. tests/integration/deploy records the same
from the lab API server's request log."""

from __future__ import annotations

import ast
import glob
import os

import pytest

from knet.kube.resources import resource
from tests.integration.deploy import manifests as m

DOCS = m.render()
# component -> (source files, ClusterRole)
COMPONENTS = {
    "flannel": ("flannel_py/*.py", "knet:flannel"),
    "kproxy": ("kproxy/**/*.py", "knet:kproxy"),
    "netpolicy": ("netpolicy/*.py", "knet:netpolicy"),
    "kdns": ("kdns/*.py", "knet:kdns"),
    "ingress": ("ingress/*.py", "knet:ingress"),
}
# explain.py (an operator CLI with the user's own kubeconfig) does not run as the deployed daemon.
# (Test support lives in knet_testing/, outside the component packages.)
NOT_DAEMON = {"explain.py"}
CLIENT_VERBS = {"create", "replace", "patch", "delete", "get", "list_objects", "replace_status", "patch_status"}


def _kind(node: ast.expr) -> str | None:
    """A model class name (Pod) or a kind string ("Ingress"); None for a variable."""
    name = node.id if isinstance(node, ast.Name) else node.value if isinstance(node, ast.Constant) else None
    try:
        return resource(name).kind if isinstance(name, str) else None
    except KeyError:
        return None


def _guard(parents: list[ast.AST]) -> str:
    """The source of the innermost `if` test around a call ('' when unconditional)."""
    for p in reversed(parents):
        if isinstance(p, ast.If):
            return ast.unparse(p.test)
    return ""


def used(component: str) -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, condition) from the component's source."""
    pattern, _ = COMPONENTS[component]
    out = set()
    for path in glob.glob(os.path.join(m.REPO, pattern), recursive=True):
        if os.path.basename(path) in NOT_DAEMON:
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        stack: list[tuple[ast.AST, list[ast.AST]]] = [(tree, [])]
        while stack:
            node, parents = stack.pop()
            for child in ast.iter_child_nodes(node):
                stack.append((child, [*parents, node]))
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name == "Informer" and len(node.args) >= 2:
                kinds = [_kind(node.args[1])]
                if kinds == [None] and isinstance(node.args[1], ast.Name):
                    # `for kind in (Pod, Namespace, ...)`: the loop's tuple
                    loop = next((p for p in reversed(parents) if isinstance(p, ast.ListComp | ast.For)), None)
                    it = loop.generators[0].iter if isinstance(loop, ast.ListComp) else getattr(loop, "iter", None)
                    kinds = [_kind(e) for e in getattr(it, "elts", [])] or [None]
                if kinds == [None] and isinstance(node.args[1], ast.Name):
                    kinds = _dict_models(parents)
                for k in kinds:
                    assert k, f"{path}:{node.lineno}: cannot tell the informer's kind"
                    r = resource(k)
                    for verb in ("list", "watch"):
                        out.add((r.group, r.plural, verb, _guard(parents)))
            elif name in CLIENT_VERBS and isinstance(fn, ast.Attribute) and \
                    ast.unparse(fn.value) in ("kube_client", "client", "kc"):
                r = resource(_kind(node.args[1]))
                status = any(k.arg == "status" and isinstance(k.value, ast.Constant) and k.value.value is True
                             for k in node.keywords)
                if name == "patch_status" or (name == "patch" and status):
                    out.add((r.group, f"{r.plural}/status", "patch", _guard(parents)))
                elif name == "get":
                    out.add((r.group, r.plural, "get", _guard(parents)))
                else:
                    raise AssertionError(f"{path}:{node.lineno}: {name} is not accounted for in RBAC")
    return out


def _dict_models(parents: list[ast.AST]) -> list[str | None]:
    """ingress: `kinds = {"x": (Model, cb), ...}; for name, (model, cb) in kinds.items()`."""
    func = next(p for p in reversed(parents) if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef))
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            return [_kind(v.elts[0]) if isinstance(v, ast.Tuple) else None for v in node.value.values]
    return [None]


def granted(role: str) -> set[tuple[str, str, str]]:
    rules = m.by_kind(DOCS, "ClusterRole")[role]["rules"]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def needed(component: str) -> set[tuple[str, str, str]]:
    """Unconditional uses, plus conditional ones whose condition the manifests' config turns on."""
    out = set()
    for g, r, v, cond in used(component):
        if cond == "self.cfg.pods == 'verified'" and m.corefile_pods_mode(DOCS) != "verified":
            continue
        out.add((g, r, v))
    return out


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_role_grants_exactly_what_the_code_uses(component):
    role = COMPONENTS[component][1]
    assert needed(component) == granted(role)


def test_expected_shape():
    assert needed("ingress") >= {("networking.k8s.io", "ingresses/status", "patch")}
    assert ("", "pods", "list") in {(g, r, v) for g, r, v, _ in used("kdns")}  # only with --pods=verified
    assert ("", "pods", "list") not in needed("kdns")
    assert needed("flannel") == {("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
                                 ("", "nodes/status", "patch")}  # what flanneld's ClusterRole grants for nodes
    for role in ("knet:flannel", "knet:kproxy", "knet:netpolicy", "knet:kdns", "knet:ingress"):
        assert all(v in ("get", "list", "watch", "patch") for _, _, v in granted(role))


def test_bindings():
    binds = m.by_kind(DOCS, "ClusterRoleBinding")
    sa = {"knet:flannel": ("knet-node", "knet-system"), "knet:kproxy": ("knet-node", "knet-system"),
          "knet:netpolicy": ("knet-node", "knet-system"), "knet:kdns": ("kdns", "kube-system"),
          "knet:ingress": ("knet-ingress", "knet-system")}
    assert {n: (b["roleRef"]["name"], b["subjects"][0]["name"], b["subjects"][0]["namespace"])
            for n, b in binds.items()} == {n: (n, *s) for n, s in sa.items()}
    assert m.pod_spec(DOCS, "DaemonSet", "knet-node")["serviceAccountName"] == "knet-node"
    assert m.pod_spec(DOCS, "Deployment", "kdns")["serviceAccountName"] == "kdns"
    assert m.pod_spec(DOCS, "Deployment", "knet-ingress")["serviceAccountName"] == "knet-ingress"
