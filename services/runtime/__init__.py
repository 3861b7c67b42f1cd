"""The distributed runtime's logic, free of Ray: placement and admission, call hosting.

``actors/`` wraps these in Ray actors; everything here is testable without a cluster.
"""
