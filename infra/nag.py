"""cdk-nag on every synth.

Pinned to cdk-nag 3.x (pyproject: cdk-nag==3.0.2), a CDK policy-validation plugin: any
unacknowledged finding fails ``app.synth()`` with ``ValidationFailed`` and writes
``cdk.out/validation-report.json``. Acknowledgements sit next to the resource they are
about, each with its reason: ``Validations.of(construct).acknowledge(Acknowledgment(...))``.
"""

from __future__ import annotations

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks


def enable_nag(app: App) -> None:
    """Run the AWS Solutions rule pack on the whole app during synthesis."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
