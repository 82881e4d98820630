"""kproxy's ebpf data path (bcc): see backend.py for the design."""
