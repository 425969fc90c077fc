"""HTTP routes, thin: parse the request, call the domain, shape the answer."""
