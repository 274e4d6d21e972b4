"""Code that runs inside the sandbox: the probe recorder and runner, and the warm worker.

Only the standard library, numpy and the sibling modules `scicode.codec` and
`scicode.compare.cmp` may be imported here: this package is copied as is into remote sandboxes.
"""
