"""Serving a finished run: the route table (user -> adapter), request validation and the
HTTP evaluation client. Ray-free; the Ray Serve deployments live in
`personal.distributed.serve`."""
