"""The wire protocols of Kubernetes' streaming subresources (exec, attach, port-forward), pure:
bytes in, frames and messages out, and back.

- `websocket`: RFC 6455 framing and the server handshake (what the kubelet's and
  kube-apiserver's golang.org/x/net/websocket and gorilla do).
- `channels`: the channel protocols on top of it: `v5.channel.k8s.io` (with the CLOSE signal),
  `v4.channel.k8s.io` (a JSON Status on the error channel), `channel.k8s.io` and the base64
  variants; port-forward's data/error channel pairs with their port prefix; the exit Status.
- `spdy`: SPDY/3.1 framing with its zlib header compression (the dictionary of the SPDY/3
  specification), as moby/spdystream and so client-go's SPDY path speak it; the
  `X-Stream-Protocol-Version` negotiation and the `streamType` headers.

The connection engines that drive these over sockets are the node agent's (lab/agent/streams).
"""
