"""nftables data path: kube-proxy's nftables proxier layout (table `ip kube-proxy`), applied with nft -f."""
