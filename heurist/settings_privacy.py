"""Private jobs' settings (``HEURIST_KEYRELEASE_*``, ``HEURIST_PRIVACY_*``), mixed into ``heurist.settings.Settings``.

Every role reads them: the client seals shares to the nodes' public keys, a miner asks the nodes' URLs, a node
finds its own key. ``HEURIST_KEYRELEASE_NODES`` is JSON, one entry per node in index order (1, 2, 3, ...):
``[{"url": "http://kr1:8701", "public_key": "<64 hex>"}, ...]``; `heurist keyrelease init --index I` prints a
node's entry.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from heurist.errors import ConfigError

DEFAULT_POLICY_VERSION = "heurist-privacy-v1"
NO_NODES = ("HEURIST_KEYRELEASE_NODES is not set: private jobs need key-release nodes; the network's operator runs "
            "`heurist keyrelease init --index I` for each and gives every role the JSON list "
            "([{\"url\": ..., \"public_key\": ...}, ...])")


class KeyReleaseNode(BaseModel):
    url: str = Field(description="Where the node answers, e.g. http://127.0.0.1:8701")
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="The node's X25519 public key, hex.")


class PrivacySettings(BaseModel):
    """Mixed into ``Settings``: every field is ``HEURIST_<NAME>``."""

    keyrelease_nodes: list[KeyReleaseNode] = Field(
        default_factory=list, description="The key-release nodes, in index order, as JSON (module docstring).")
    keyrelease_threshold: int = Field(2, ge=1, le=16, description="Shares needed to rebuild a private job's "
                                      "key (t of the n nodes); at most the number of nodes.")
    keyrelease_key_file: str | None = Field(None, description="A node's X25519 private key file (hex); default "
                                            "data_dir/keyrelease-<index>.key, created by `heurist keyrelease init`.")
    keyrelease_timeout_s: float = Field(5.0, gt=0, le=60, description="How long a miner waits for each node.")
    privacy_policy_version: str = Field(DEFAULT_POLICY_VERSION, min_length=1, max_length=64, description="The "
                                        "privacy policy a privacy miner signs its acceptance of; registrations "
                                        "for another version are not privacy-enabled.")
    privacy_client_key: SecretStr | None = Field(None, description="The client's 32-byte hex secret that private "
                                                 "jobs' data keys derive from; default data_dir/privacy-client.key "
                                                 "(created on first use, 0600). Lose it and outputs are unreadable.")
    privacy_approver: str | None = Field(None, pattern=r"^0x[0-9a-fA-F]{40}$", description="The address of the "
                                         "operator's approver key: key-release nodes count only approvals it "
                                         "signed (`heurist privacy approve --key-file`), so whoever can write the "
                                         "database cannot approve a key of their own. Unset: approvals are "
                                         "trusted as the database holds them (a warning at node start).")
    privacy_tee_verifier: str | None = Field(None, description="Reserved: a TEE attestation verifier. Unset: "
                                             "attestations are recorded as absent and not required.")


def configured_nodes(settings: PrivacySettings) -> list[KeyReleaseNode]:
    """The key-release nodes, in index order, if a private job can be sealed to them and opened from them: at
    least one, and at least ``keyrelease_threshold``; ``ConfigError`` naming the setting otherwise. The client
    (sealing) and a privacy miner or auditor (gathering) both start from here."""
    nodes, need = settings.keyrelease_nodes, settings.keyrelease_threshold
    if not nodes:
        raise ConfigError(NO_NODES)
    if need > len(nodes):
        raise ConfigError(f"HEURIST_KEYRELEASE_THRESHOLD is {need} but only {len(nodes)} key-release node(s): "
                          f"HEURIST_KEYRELEASE_NODES lists {len(nodes)}; set the threshold to at most {len(nodes)}")
    return list(nodes)
