"""The lab's Kubernetes API server (`knet-apiserver`). Its map -- every module, from the wire
inward -- and what adding a kind takes are in README.md beside this file."""
