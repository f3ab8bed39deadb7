"""Robot policy endpoint on Ray Serve: batched inference (HTTP and handle) with checkpoint hot-swap.

    from serve_apps.policy import PolicyAppArgs, build_policy_app, deploy_policy
"""

from __future__ import annotations

from serve_apps.policy.builder import PolicyAppArgs, build_policy_app, deploy_policy

__all__ = ["PolicyAppArgs", "build_policy_app", "deploy_policy"]
