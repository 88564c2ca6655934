"""Method packages: each turns a model into a cheaper one (see ``frugalnn.plugins``)."""
