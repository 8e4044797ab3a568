"""Real deployments with Flower's Deployment Engine: certificates, a local federation, CLI."""

from fedstrat.deploy.certs import CertificateSet, generate_certificates, generate_supernode_keys
from fedstrat.deploy.local import (
    FederationError,
    LocalFederation,
    RunResult,
    find_marked_processes,
    format_run_config,
    free_port,
)

__all__ = [
    "CertificateSet",
    "FederationError",
    "LocalFederation",
    "RunResult",
    "find_marked_processes",
    "format_run_config",
    "free_port",
    "generate_certificates",
    "generate_supernode_keys",
]
