// knet kproxy, ebpf data path: service address -> backend translation from maps the daemon
// writes (kproxy/ebpf/maps.py mirrors every struct below; keep them in step).
//
// Socket level (cgroup v2 hooks on the node's pod cgroup): connect4 / sendmsg4 rewrite the
// destination before any packet exists, recvmsg4 / getpeername4 translate the peer back to the
// service address. Packet level (tc on the node's external interfaces): ingress DNATs traffic
// for node ports / load-balancer / external IPs and remembers the flow, egress puts the
// service address back on the replies.
//
// IPv6 (kube-proxy's second family): the same logic over 128-bit addresses, in maps of their
// own (services6, slots6, members6, affinity6, sock_fwd6, sock_rev6, ct6: the IPv4 maps and
// their fast path stay as they were), the connect6 / sendmsg6 / recvmsg6 / getpeername6 hooks,
// and the same tc programs, which branch on the ethertype. Only IPv6 headers without extension
// headers are translated (next header TCP or UDP), as only option-less IPv4 headers are.
//
// Byte order: every address and port in every map is in network byte order, exactly as the
// hooks see them, so the fast path never converts.

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

// Sizes and the masquerade mark come from the loader (-D...); defaults keep the file compilable.
#ifndef FE_MAX
#define FE_MAX 131072
#endif
#ifndef SLOT_MAX
#define SLOT_MAX 262144
#endif
#ifndef AFF_MAX
#define AFF_MAX 65536
#endif
#ifndef SOCK_MAX
#define SOCK_MAX 65536
#endif
#ifndef CT_MAX
#define CT_MAX 131072
#endif
#ifndef MASQ_MARK
#define MASQ_MARK 0x4000
#endif

#define ANY_SET 0     // members under set 0: the address is some service's backend
#define SCOPE_SOCK 0  // frontend seen by pods' sockets (cgroup hooks)
#define SCOPE_EXT 1   // frontend seen on the wire at an external interface (tc)
#define KIND_SOCK 0   // affinity client = a pod's netns cookie
#define KIND_EXT 1    // affinity client = a source IP
#define FLAG_MASQ 1   // external traffic is masqueraded (externalTrafficPolicy: Cluster)
#define DIR_IN 0      // ct entry: client -> frontend, value = backend
#define DIR_OUT 1     // ct entry: backend -> client, value = frontend
#define ECONNREFUSED 111
#define NSEC 1000000000ULL

#define ETH_OFF 14
#define IP_SRC_OFF (ETH_OFF + 12)
#define IP_DST_OFF (ETH_OFF + 16)
#define IP_CSUM_OFF (ETH_OFF + 10)
#define L4_OFF (ETH_OFF + 20)  // only option-less IPv4 headers are translated
#define IP6_SRC_OFF (ETH_OFF + 8)
#define IP6_DST_OFF (ETH_OFF + 24)
#define L4_OFF6 (ETH_OFF + 40)  // IPv6 headers without extension headers

struct fe_key {
    __u32 ip;
    __u16 port;
    __u8 proto;
    __u8 scope;
};

struct fe_val {
    __u32 set;       // backend set id (stable per service port and endpoint kind)
    __u32 count;     // slots 0..count-1 of the set are valid; 0: no endpoints
    __u32 affinity;  // ClientIP affinity timeout in seconds, 0: none
    __u32 flags;
};

struct slot_key {
    __u32 set;
    __u32 slot;
};

struct backend {
    __u32 ip;
    __u16 port;
    __u16 pad;
};

struct member_key {
    __u32 set;
    __u32 ip;
    __u16 port;
    __u16 pad;
};

struct aff_key {
    __u64 client;
    __u32 set;
    __u32 kind;
};

struct aff_val {
    __u64 seen;  // bpf_ktime_get_ns of the last connection
    __u32 ip;
    __u16 port;
    __u16 pad;
};

struct sock_key {
    __u64 cookie;  // socket cookie
    __u32 ip;
    __u16 port;
    __u8 proto;
    __u8 pad;
};

struct ct_key {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 dir;
    __u16 pad;
};

struct ct_val {
    __u32 ip;
    __u16 port;
    __u16 flags;
    __u32 set;
    __u32 pad;
};

// Written by the daemon. Not preallocated: an update swaps in a fresh element under RCU, so a
// program holding a pointer never sees a value being overwritten (and 10,000 services cost
// memory only when they exist).
BPF_F_TABLE("hash", struct fe_key, struct fe_val, services, FE_MAX, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct slot_key, struct backend, slots, SLOT_MAX, BPF_F_NO_PREALLOC);
// (set, backend) present <=> the backend may still take new connections of that set; lets
// affinity and flow entries notice a removed endpoint without scanning slots.
BPF_F_TABLE("hash", struct member_key, __u8, members, SLOT_MAX, BPF_F_NO_PREALLOC);
// Written by the programs; LRU, so they never fill up.
BPF_TABLE("lru_hash", struct aff_key, struct aff_val, affinity, AFF_MAX);
BPF_TABLE("lru_hash", struct sock_key, struct backend, sock_fwd, SOCK_MAX);  // (sock, service) -> backend
BPF_TABLE("lru_hash", struct sock_key, struct backend, sock_rev, SOCK_MAX);  // (sock, backend) -> service
BPF_TABLE("lru_hash", struct ct_key, struct ct_val, ct, CT_MAX);

static __always_inline int is_member(__u32 set, __u32 ip, __u16 port) {
    struct member_key mk;
    __builtin_memset(&mk, 0, sizeof(mk));
    mk.set = set;
    mk.ip = ip;
    mk.port = port;
    return members.lookup(&mk) != NULL;
}

// Choose a backend of fe (count > 0): the client's affinity backend while it is fresh and still
// a member, else a uniformly random slot. Returns 0 and fills *out, or -1.
static __always_inline int pick(struct fe_val *fe, __u64 client, __u32 kind, struct backend *out) {
    __u64 now = bpf_ktime_get_ns();
    struct aff_key ak;
    __builtin_memset(&ak, 0, sizeof(ak));
    ak.client = client;
    ak.set = fe->set;
    ak.kind = kind;
    if (fe->affinity) {
        struct aff_val *av = affinity.lookup(&ak);
        if (av && now - av->seen <= (__u64)fe->affinity * NSEC && is_member(fe->set, av->ip, av->port)) {
            av->seen = now;  // like `recent --set`: the timeout counts from the last connection
            out->ip = av->ip;
            out->port = av->port;
            out->pad = 0;
            return 0;
        }
    }
    struct slot_key sk;
    __builtin_memset(&sk, 0, sizeof(sk));
    sk.set = fe->set;
    sk.slot = bpf_get_prandom_u32() % fe->count;
    struct backend *b = slots.lookup(&sk);
    if (!b)
        return -1;
    out->ip = b->ip;
    out->port = b->port;
    out->pad = 0;
    if (fe->affinity) {
        struct aff_val nv;
        __builtin_memset(&nv, 0, sizeof(nv));
        nv.seen = now;
        nv.ip = b->ip;
        nv.port = b->port;
        affinity.update(&ak, &nv);
    }
    return 0;
}

static __always_inline int lookup_service(__u32 ip, __u16 port, __u8 proto, __u8 scope, struct fe_val *out) {
    struct fe_key k;
    __builtin_memset(&k, 0, sizeof(k));
    k.ip = ip;
    k.port = port;
    k.proto = proto;
    k.scope = scope;
    struct fe_val *v = services.lookup(&k);
    if (!v)
        return -1;
    *out = *v;  // one copy, so count and set are read together
    return 0;
}

static __always_inline void remember_rev(__u64 cookie, struct backend *b, __u8 proto, __u32 vip, __u16 vport) {
    struct sock_key rk;
    __builtin_memset(&rk, 0, sizeof(rk));
    rk.cookie = cookie;
    rk.ip = b->ip;
    rk.port = b->port;
    rk.proto = proto;
    struct backend rv;
    __builtin_memset(&rv, 0, sizeof(rv));
    rv.ip = vip;
    rv.port = vport;
    sock_rev.update(&rk, &rv);
}

// The service a socket call addresses: 1 (and *fe) for a service with endpoints; 0 for one
// without, and the call fails with ECONNREFUSED (kube-proxy rejects such connections; that is
// what a TCP RST gives the client, where a plain `return 0` would surface as EPERM); -1 for an
// address that is no service (left alone).
static __always_inline int refuse_without_endpoints(struct fe_val *fe) {
    if (fe->count == 0) {
        bpf_set_retval(-ECONNREFUSED);
        return 0;
    }
    return 1;
}

static __always_inline int sock_frontend(struct bpf_sock_addr *ctx, struct fe_val *fe) {
    if (lookup_service(ctx->user_ip4, (__u16)ctx->user_port, (__u8)ctx->protocol, SCOPE_SOCK, fe) < 0)
        return -1;
    return refuse_without_endpoints(fe);
}

// Send the call to backend b, remembering the service address for the replies' source.
static __always_inline void steer(struct bpf_sock_addr *ctx, __u64 cookie, struct backend *b) {
    remember_rev(cookie, b, (__u8)ctx->protocol, ctx->user_ip4, (__u16)ctx->user_port);
    ctx->user_ip4 = b->ip;
    ctx->user_port = (__u32)b->port;
}

// connect(): TCP, SCTP and connected UDP.
int sock_connect4(struct bpf_sock_addr *ctx) {
    struct fe_val fe;
    int found = sock_frontend(ctx, &fe);
    if (found <= 0)
        return found < 0;  // not a service: allow untouched; no endpoints: refused
    struct backend b;
    if (pick(&fe, bpf_get_netns_cookie(ctx), KIND_SOCK, &b) < 0)
        return 1;
    steer(ctx, bpf_get_socket_cookie(ctx), &b);
    return 1;
}

// sendto()/sendmsg() on unconnected UDP sockets: one backend per (socket, service), kept while it
// stays a member (so a flow sticks to its backend and moves on when the endpoint goes away, the
// socket-level equivalent of flushing stale UDP conntrack entries).
int sock_sendmsg4(struct bpf_sock_addr *ctx) {
    struct fe_val fe;
    int found = sock_frontend(ctx, &fe);
    if (found <= 0)
        return found < 0;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct sock_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    fk.cookie = cookie;
    fk.ip = ctx->user_ip4;
    fk.port = (__u16)ctx->user_port;
    fk.proto = (__u8)ctx->protocol;
    struct backend b;
    struct backend *known = sock_fwd.lookup(&fk);
    if (known && is_member(fe.set, known->ip, known->port)) {
        b = *known;
    } else {
        if (pick(&fe, bpf_get_netns_cookie(ctx), KIND_SOCK, &b) < 0)
            return 1;
        sock_fwd.update(&fk, &b);
    }
    steer(ctx, cookie, &b);
    return 1;
}

static __always_inline void restore_peer(struct bpf_sock_addr *ctx) {
    struct sock_key rk;
    __builtin_memset(&rk, 0, sizeof(rk));
    rk.cookie = bpf_get_socket_cookie(ctx);
    rk.ip = ctx->user_ip4;
    rk.port = (__u16)ctx->user_port;
    rk.proto = (__u8)ctx->protocol;
    struct backend *svc = sock_rev.lookup(&rk);
    if (svc) {
        ctx->user_ip4 = svc->ip;
        ctx->user_port = (__u32)svc->port;
    }
}

// recvfrom()/recvmsg() on UDP: replies appear to come from the service address.
int sock_recvmsg4(struct bpf_sock_addr *ctx) {
    restore_peer(ctx);
    return 1;
}

// getpeername(): a connected socket reports the service address it connected to.
int sock_getpeername4(struct bpf_sock_addr *ctx) {
    restore_peer(ctx);
    return 1;
}

// Rewrite one address (at ip_off) and port (at port_off) and fix the IP and L4 checksums
// (the L4 one covers the pseudo-header, hence BPF_F_PSEUDO_HDR for the address). UDP checksum 0
// means "none" and must stay 0 (BPF_F_MARK_MANGLED_0).
static __always_inline void rewrite_port(struct __sk_buff *skb, int csum_off, __u64 l4flags, int port_off,
                                         __u16 old_port, __u16 new_port) {
    if (old_port != new_port) {
        bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4flags | 2);
        bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0);
    }
}

static __always_inline void rewrite(struct __sk_buff *skb, __u8 proto, int ip_off, int port_off,
                                    __u32 old_ip, __u32 new_ip, __u16 old_port, __u16 new_port) {
    int csum_off = proto == IPPROTO_TCP ? L4_OFF + 16 : L4_OFF + 6;
    __u64 l4flags = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
    if (old_ip != new_ip) {
        bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip, l4flags | BPF_F_PSEUDO_HDR | 4);
        bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, 4);
        bpf_skb_store_bytes(skb, ip_off, &new_ip, 4, 0);
    }
    rewrite_port(skb, csum_off, l4flags, port_off, old_port, new_port);
}

// The ports of the TCP or UDP header at l4, and whether it opens a TCP connection (a SYN without
// ACK); -1 for other protocols or a header cut short.
static __always_inline int parse_ports(void *l4, void *end, __u8 proto, __u16 *sport, __u16 *dport, __u8 *syn) {
    *syn = 0;
    if (proto == IPPROTO_TCP) {
        struct tcphdr *th = l4;
        if ((void *)(th + 1) > end)
            return -1;
        *sport = th->source;
        *dport = th->dest;
        *syn = th->syn && !th->ack;
        return 0;
    }
    if (proto == IPPROTO_UDP) {
        struct udphdr *uh = l4;
        if ((void *)(uh + 1) > end)
            return -1;
        *sport = uh->source;
        *dport = uh->dest;
        return 0;
    }
    return -1;
}

struct flow {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 syn;  // TCP SYN without ACK: a new connection
};

static __always_inline int parse(struct __sk_buff *skb, struct flow *f) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return -1;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5)
        return -1;
    if (ip->frag_off & bpf_htons(0x3fff))  // fragments: no ports to translate by
        return -1;
    f->proto = ip->protocol;
    f->saddr = ip->saddr;
    f->daddr = ip->daddr;
    return parse_ports((void *)(ip + 1), end, ip->protocol, &f->sport, &f->dport, &f->syn);
}

// The conntrack-map key of a parsed packet seen in one direction.
static __always_inline void ct_key_of(struct flow *f, __u8 dir, struct ct_key *k) {
    __builtin_memset(k, 0, sizeof(*k));
    k->saddr = f->saddr;
    k->daddr = f->daddr;
    k->sport = f->sport;
    k->dport = f->dport;
    k->proto = f->proto;
    k->dir = dir;
}

// External interface, ingress: node port / LB / external IP -> backend (IPv4).
static __always_inline int tc_ingress4(struct __sk_buff *skb) {
    struct flow f;
    if (parse(skb, &f) < 0)
        return TC_ACT_OK;
    struct ct_key ck;
    ct_key_of(&f, DIR_IN, &ck);
    struct ct_val cv;
    struct ct_val *known = ct.lookup(&ck);
    // An established flow keeps its backend (terminating endpoints finish their connections);
    // a new TCP connection reusing the tuple, or a UDP flow whose backend was removed, picks again.
    if (known && ((f.proto == IPPROTO_TCP && !f.syn) || is_member(known->set, known->ip, known->port))) {
        cv = *known;
    } else {
        struct fe_val fe;
        // No endpoints: leave the packet to the kernel, where the filter rules reject it (or
        // drop it, for a Local policy without local endpoints), as in iptables mode.
        if (lookup_service(f.daddr, f.dport, f.proto, SCOPE_EXT, &fe) < 0 || fe.count == 0)
            return TC_ACT_OK;
        // A backend answering masqueraded traffic: MASQUERADE --random-fully may have picked a
        // source port that is also a node port. netfilter knows it as a reply; so must we.
        if (is_member(ANY_SET, f.saddr, f.sport))
            return TC_ACT_OK;
        struct backend b;
        if (pick(&fe, (__u64)f.saddr, KIND_EXT, &b) < 0)
            return TC_ACT_OK;
        __builtin_memset(&cv, 0, sizeof(cv));
        cv.ip = b.ip;
        cv.port = b.port;
        cv.flags = (__u16)fe.flags;
        cv.set = fe.set;
        ct.update(&ck, &cv);
        // The reply as it leaves this node: backend -> client (after the kernel undid any
        // masquerade), to be given the frontend's address back.
        struct ct_key rk;
        __builtin_memset(&rk, 0, sizeof(rk));
        rk.saddr = b.ip;
        rk.daddr = f.saddr;
        rk.sport = b.port;
        rk.dport = f.sport;
        rk.proto = f.proto;
        rk.dir = DIR_OUT;
        struct ct_val rv;
        __builtin_memset(&rv, 0, sizeof(rv));
        rv.ip = f.daddr;
        rv.port = f.dport;
        rv.set = fe.set;
        ct.update(&rk, &rv);
    }
    rewrite(skb, f.proto, IP_DST_OFF, L4_OFF + 2, f.daddr, cv.ip, f.dport, cv.port);
    if (cv.flags & FLAG_MASQ)
        skb->mark |= MASQ_MARK;  // KUBE-POSTROUTING masquerades it, so replies return here
    return TC_ACT_OK;
}

// External interface, egress: replies of translated flows get the frontend address back (IPv4).
static __always_inline int tc_egress4(struct __sk_buff *skb) {
    struct flow f;
    if (parse(skb, &f) < 0)
        return TC_ACT_OK;
    struct ct_key ck;
    ct_key_of(&f, DIR_OUT, &ck);
    struct ct_val *fe = ct.lookup(&ck);
    if (!fe)
        return TC_ACT_OK;
    __u32 ip = fe->ip;
    __u16 port = fe->port;
    rewrite(skb, f.proto, IP_SRC_OFF, L4_OFF, f.saddr, ip, f.sport, port);
    return TC_ACT_OK;
}

// ---- IPv6 ------------------------------------------------------------------------------------

struct fe6_key {
    __u32 ip[4];
    __u16 port;
    __u8 proto;
    __u8 scope;
};

struct backend6 {
    __u32 ip[4];
    __u16 port;
    __u16 pad;
};

struct member6_key {
    __u32 set;
    __u32 ip[4];
    __u16 port;
    __u16 pad;
};

struct aff6_key {
    __u32 client[4];  // a pod's netns cookie (words 0-1) or a source address
    __u32 set;
    __u32 kind;
};

struct aff6_val {
    __u64 seen;
    __u32 ip[4];
    __u16 port;
    __u16 pad;
    __u32 pad2;
};

struct sock6_key {
    __u64 cookie;
    __u32 ip[4];
    __u16 port;
    __u8 proto;
    __u8 pad;
    __u32 pad2;
};

struct ct6_key {
    __u32 saddr[4];
    __u32 daddr[4];
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 dir;
    __u16 pad;
};

struct ct6_val {
    __u32 ip[4];
    __u16 port;
    __u16 flags;
    __u32 set;
};

BPF_F_TABLE("hash", struct fe6_key, struct fe_val, services6, FE_MAX, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct slot_key, struct backend6, slots6, SLOT_MAX, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct member6_key, __u8, members6, SLOT_MAX, BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", struct aff6_key, struct aff6_val, affinity6, AFF_MAX);
BPF_TABLE("lru_hash", struct sock6_key, struct backend6, sock_fwd6, SOCK_MAX);
BPF_TABLE("lru_hash", struct sock6_key, struct backend6, sock_rev6, SOCK_MAX);
BPF_TABLE("lru_hash", struct ct6_key, struct ct6_val, ct6, CT_MAX);

static __always_inline void copy6(__u32 *dst, const __u32 *src) {
    dst[0] = src[0];
    dst[1] = src[1];
    dst[2] = src[2];
    dst[3] = src[3];
}

static __always_inline int same6(const __u32 *a, const __u32 *b) {
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int is_member6(__u32 set, const __u32 *ip, __u16 port) {
    struct member6_key mk;
    __builtin_memset(&mk, 0, sizeof(mk));
    mk.set = set;
    copy6(mk.ip, ip);
    mk.port = port;
    return members6.lookup(&mk) != NULL;
}

static __always_inline int pick6(struct fe_val *fe, const __u32 *client, __u32 kind, struct backend6 *out) {
    __u64 now = bpf_ktime_get_ns();
    struct aff6_key ak;
    __builtin_memset(&ak, 0, sizeof(ak));
    copy6(ak.client, client);
    ak.set = fe->set;
    ak.kind = kind;
    if (fe->affinity) {
        struct aff6_val *av = affinity6.lookup(&ak);
        if (av && now - av->seen <= (__u64)fe->affinity * NSEC && is_member6(fe->set, av->ip, av->port)) {
            av->seen = now;
            copy6(out->ip, av->ip);
            out->port = av->port;
            out->pad = 0;
            return 0;
        }
    }
    struct slot_key sk;
    __builtin_memset(&sk, 0, sizeof(sk));
    sk.set = fe->set;
    sk.slot = bpf_get_prandom_u32() % fe->count;
    struct backend6 *b = slots6.lookup(&sk);
    if (!b)
        return -1;
    copy6(out->ip, b->ip);
    out->port = b->port;
    out->pad = 0;
    if (fe->affinity) {
        struct aff6_val nv;
        __builtin_memset(&nv, 0, sizeof(nv));
        nv.seen = now;
        copy6(nv.ip, b->ip);
        nv.port = b->port;
        affinity6.update(&ak, &nv);
    }
    return 0;
}

static __always_inline int lookup_service6(const __u32 *ip, __u16 port, __u8 proto, __u8 scope, struct fe_val *out) {
    struct fe6_key k;
    __builtin_memset(&k, 0, sizeof(k));
    copy6(k.ip, ip);
    k.port = port;
    k.proto = proto;
    k.scope = scope;
    struct fe_val *v = services6.lookup(&k);
    if (!v)
        return -1;
    *out = *v;
    return 0;
}

static __always_inline void user_ip6(struct bpf_sock_addr *ctx, __u32 *ip) {
    ip[0] = ctx->user_ip6[0];
    ip[1] = ctx->user_ip6[1];
    ip[2] = ctx->user_ip6[2];
    ip[3] = ctx->user_ip6[3];
}

static __always_inline void set_user_ip6(struct bpf_sock_addr *ctx, const __u32 *ip) {
    ctx->user_ip6[0] = ip[0];
    ctx->user_ip6[1] = ip[1];
    ctx->user_ip6[2] = ip[2];
    ctx->user_ip6[3] = ip[3];
}

// As sock_frontend: 1 with endpoints, 0 refused (no endpoints), -1 not a service.
static __always_inline int sock_frontend6(struct bpf_sock_addr *ctx, const __u32 *vip, struct fe_val *fe) {
    if (lookup_service6(vip, (__u16)ctx->user_port, (__u8)ctx->protocol, SCOPE_SOCK, fe) < 0)
        return -1;
    return refuse_without_endpoints(fe);
}

static __always_inline void steer6(struct bpf_sock_addr *ctx, __u64 cookie, const __u32 *vip, struct backend6 *b) {
    struct sock6_key rk;
    __builtin_memset(&rk, 0, sizeof(rk));
    rk.cookie = cookie;
    copy6(rk.ip, b->ip);
    rk.port = b->port;
    rk.proto = (__u8)ctx->protocol;
    struct backend6 rv;
    __builtin_memset(&rv, 0, sizeof(rv));
    copy6(rv.ip, vip);
    rv.port = (__u16)ctx->user_port;
    sock_rev6.update(&rk, &rv);
    set_user_ip6(ctx, b->ip);
    ctx->user_port = (__u32)b->port;
}

static __always_inline void netns_client(struct bpf_sock_addr *ctx, __u32 *client) {
    __u64 cookie = bpf_get_netns_cookie(ctx);
    client[0] = (__u32)cookie;
    client[1] = (__u32)(cookie >> 32);
    client[2] = 0;
    client[3] = 0;
}

int sock_connect6(struct bpf_sock_addr *ctx) {
    __u32 vip[4];
    user_ip6(ctx, vip);
    struct fe_val fe;
    int found = sock_frontend6(ctx, vip, &fe);
    if (found <= 0)
        return found < 0;
    __u32 client[4];
    netns_client(ctx, client);
    struct backend6 b;
    if (pick6(&fe, client, KIND_SOCK, &b) < 0)
        return 1;
    steer6(ctx, bpf_get_socket_cookie(ctx), vip, &b);
    return 1;
}

int sock_sendmsg6(struct bpf_sock_addr *ctx) {
    __u32 vip[4];
    user_ip6(ctx, vip);
    struct fe_val fe;
    int found = sock_frontend6(ctx, vip, &fe);
    if (found <= 0)
        return found < 0;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct sock6_key fk;
    __builtin_memset(&fk, 0, sizeof(fk));
    fk.cookie = cookie;
    copy6(fk.ip, vip);
    fk.port = (__u16)ctx->user_port;
    fk.proto = (__u8)ctx->protocol;
    struct backend6 b;
    struct backend6 *known = sock_fwd6.lookup(&fk);
    if (known && is_member6(fe.set, known->ip, known->port)) {
        b = *known;
    } else {
        __u32 client[4];
        netns_client(ctx, client);
        if (pick6(&fe, client, KIND_SOCK, &b) < 0)
            return 1;
        sock_fwd6.update(&fk, &b);
    }
    steer6(ctx, cookie, vip, &b);
    return 1;
}

static __always_inline void restore_peer6(struct bpf_sock_addr *ctx) {
    struct sock6_key rk;
    __builtin_memset(&rk, 0, sizeof(rk));
    rk.cookie = bpf_get_socket_cookie(ctx);
    user_ip6(ctx, rk.ip);
    rk.port = (__u16)ctx->user_port;
    rk.proto = (__u8)ctx->protocol;
    struct backend6 *svc = sock_rev6.lookup(&rk);
    if (svc) {
        set_user_ip6(ctx, svc->ip);
        ctx->user_port = (__u32)svc->port;
    }
}

int sock_recvmsg6(struct bpf_sock_addr *ctx) {
    restore_peer6(ctx);
    return 1;
}

int sock_getpeername6(struct bpf_sock_addr *ctx) {
    restore_peer6(ctx);
    return 1;
}

struct flow6 {
    __u32 saddr[4];
    __u32 daddr[4];
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 syn;
};

static __always_inline int parse6(struct __sk_buff *skb, struct flow6 *f) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IPV6))
        return -1;
    struct ipv6hdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end)
        return -1;
    f->proto = ip->nexthdr;
    __builtin_memcpy(f->saddr, &ip->saddr, 16);
    __builtin_memcpy(f->daddr, &ip->daddr, 16);
    // Extension headers, ICMPv6, ...: not translated.
    return parse_ports((void *)(ip + 1), end, ip->nexthdr, &f->sport, &f->dport, &f->syn);
}

// Rewrite one IPv6 address and port; the L4 checksum covers the pseudo-header (no IP checksum).
static __always_inline void rewrite6(struct __sk_buff *skb, __u8 proto, int ip_off, int port_off,
                                     __u32 *old_ip, __u32 *new_ip, __u16 old_port, __u16 new_port) {
    int csum_off = proto == IPPROTO_TCP ? L4_OFF6 + 16 : L4_OFF6 + 6;
    __u64 l4flags = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
    if (!same6(old_ip, new_ip)) {
        __s64 diff = bpf_csum_diff(old_ip, 16, new_ip, 16, 0);
        bpf_l4_csum_replace(skb, csum_off, 0, diff, l4flags | BPF_F_PSEUDO_HDR);
        bpf_skb_store_bytes(skb, ip_off, new_ip, 16, 0);
    }
    rewrite_port(skb, csum_off, l4flags, port_off, old_port, new_port);
}

static __always_inline int tc_ingress6(struct __sk_buff *skb) {
    struct flow6 f;
    if (parse6(skb, &f) < 0)
        return TC_ACT_OK;
    struct ct6_key ck;
    __builtin_memset(&ck, 0, sizeof(ck));
    copy6(ck.saddr, f.saddr);
    copy6(ck.daddr, f.daddr);
    ck.sport = f.sport;
    ck.dport = f.dport;
    ck.proto = f.proto;
    ck.dir = DIR_IN;
    struct ct6_val cv;
    struct ct6_val *known = ct6.lookup(&ck);
    if (known && ((f.proto == IPPROTO_TCP && !f.syn) || is_member6(known->set, known->ip, known->port))) {
        cv = *known;
    } else {
        struct fe_val fe;
        if (lookup_service6(f.daddr, f.dport, f.proto, SCOPE_EXT, &fe) < 0 || fe.count == 0)
            return TC_ACT_OK;
        if (is_member6(ANY_SET, f.saddr, f.sport))
            return TC_ACT_OK;
        struct backend6 b;
        if (pick6(&fe, f.saddr, KIND_EXT, &b) < 0)
            return TC_ACT_OK;
        __builtin_memset(&cv, 0, sizeof(cv));
        copy6(cv.ip, b.ip);
        cv.port = b.port;
        cv.flags = (__u16)fe.flags;
        cv.set = fe.set;
        ct6.update(&ck, &cv);
        struct ct6_key rk;
        __builtin_memset(&rk, 0, sizeof(rk));
        copy6(rk.saddr, b.ip);
        copy6(rk.daddr, f.saddr);
        rk.sport = b.port;
        rk.dport = f.sport;
        rk.proto = f.proto;
        rk.dir = DIR_OUT;
        struct ct6_val rv;
        __builtin_memset(&rv, 0, sizeof(rv));
        copy6(rv.ip, f.daddr);
        rv.port = f.dport;
        rv.set = fe.set;
        ct6.update(&rk, &rv);
    }
    rewrite6(skb, f.proto, IP6_DST_OFF, L4_OFF6 + 2, f.daddr, cv.ip, f.dport, cv.port);
    if (cv.flags & FLAG_MASQ)
        skb->mark |= MASQ_MARK;
    return TC_ACT_OK;
}

static __always_inline int tc_egress6(struct __sk_buff *skb) {
    struct flow6 f;
    if (parse6(skb, &f) < 0)
        return TC_ACT_OK;
    struct ct6_key ck;
    __builtin_memset(&ck, 0, sizeof(ck));
    copy6(ck.saddr, f.saddr);
    copy6(ck.daddr, f.daddr);
    ck.sport = f.sport;
    ck.dport = f.dport;
    ck.proto = f.proto;
    ck.dir = DIR_OUT;
    struct ct6_val *fe = ct6.lookup(&ck);
    if (!fe)
        return TC_ACT_OK;
    __u32 ip[4];
    copy6(ip, fe->ip);
    __u16 port = fe->port;
    rewrite6(skb, f.proto, IP6_SRC_OFF, L4_OFF6, f.saddr, ip, f.sport, port);
    return TC_ACT_OK;
}

static __always_inline __u16 ethertype(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return 0;
    return eth->h_proto;
}

// External interface, ingress / egress: each family's translation.
int tc_ingress(struct __sk_buff *skb) {
    return ethertype(skb) == bpf_htons(ETH_P_IPV6) ? tc_ingress6(skb) : tc_ingress4(skb);
}

int tc_egress(struct __sk_buff *skb) {
    return ethertype(skb) == bpf_htons(ETH_P_IPV6) ? tc_egress6(skb) : tc_egress4(skb);
}
