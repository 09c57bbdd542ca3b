"""Signed economy actions: one EIP-712 type per action, signed by the address it spends from.

Why EIP-712 with typed fields (not a JSON body, as the network's job messages are): these are signed by
people in wallets, which show each typed field (node, token, amount) before signing, and a contract can
verify the same digest later. The domain is the economy's: name and version from settings
(``HEURIST_ECONOMY_DOMAIN_NAME``/``_VERSION``), the network's chain id and, once there is one, its settlement
contract. Every action carries a nonce; the book's key ``action:<signer>:<nonce>`` is unique, so a
replayed message is refused, and one signed for another chain or another action type recovers to another
address and is refused too.

Amounts are uint256 base units; over JSON they travel as decimal strings (JavaScript numbers lose digits
past 2^53).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from eth_account.messages import SignableMessage, encode_typed_data
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from heurist.economy.book import EconomyError
from heurist.identity import Wallet, recover_encoded

ADDRESS = r"^0x[0-9a-fA-F]{40}$"
TokenName = Literal["HUE", "esHUE"]


class Action(BaseModel):
    """Base of the signed actions; ``signer_field`` names the field that must recover from the signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    primary: ClassVar[str]
    signer_field: ClassVar[str] = "account"
    types: ClassVar[tuple[tuple[str, str], ...]]

    nonce: int = Field(ge=0, lt=2**64)

    @field_serializer("*")
    def _json(self, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def signer(self) -> str:
        return str(getattr(self, self.signer_field))


def _amount() -> Any:
    return Field(gt=0, lt=2**256)


class Stake(Action):
    primary = "Stake"
    types = (("account", "address"), ("node", "address"), ("token", "string"), ("amount", "uint256"),
             ("nonce", "uint256"))
    account: str = Field(pattern=ADDRESS)
    node: str = Field(pattern=ADDRESS)
    token: TokenName
    amount: int = _amount()


class Unstake(Stake):
    primary = "Unstake"


class MoveStake(Action):
    primary = "MoveStake"
    types = (("account", "address"), ("from_node", "address"), ("to_node", "address"), ("token", "string"),
             ("amount", "uint256"), ("nonce", "uint256"))
    account: str = Field(pattern=ADDRESS)
    from_node: str = Field(pattern=ADDRESS)
    to_node: str = Field(pattern=ADDRESS)
    token: TokenName
    amount: int = _amount()


class Withdraw(Action):
    """Take ``amount`` of unstaked HUE whose lock has ended back into the liquid balance."""

    primary = "Withdraw"
    types = (("account", "address"), ("amount", "uint256"), ("nonce", "uint256"))
    account: str = Field(pattern=ADDRESS)
    amount: int = _amount()


class Vest(Withdraw):
    """Start vesting ``amount`` of liquid esHUE into HUE (linear over the vesting period)."""

    primary = "Vest"


class Claim(Action):
    """Claim every vested HUE of the account's vesting positions."""

    primary = "Claim"
    types = (("account", "address"), ("nonce", "uint256"))
    account: str = Field(pattern=ADDRESS)


class SetBribe(Action):
    """The share of a node's rewards its stakers get, in basis points, from the next epoch on."""

    primary = "SetBribe"
    signer_field = "node"
    types = (("node", "address"), ("bps", "uint256"), ("nonce", "uint256"))
    node: str = Field(pattern=ADDRESS)
    bps: int = Field(ge=0, lt=2**256)


class FundKey(Action):
    """Buy credit units for gateway API key ``key_id`` with up to ``amount`` HUE at the current price."""

    primary = "FundKey"
    types = (("account", "address"), ("key_id", "uint256"), ("amount", "uint256"), ("nonce", "uint256"))
    account: str = Field(pattern=ADDRESS)
    key_id: int = Field(ge=1, lt=2**63)
    amount: int = _amount()


ACTIONS: dict[str, type[Action]] = {a.primary: a for a in (Stake, Unstake, MoveStake, Withdraw, Vest, Claim,
                                                           SetBribe, FundKey)}


class Signed(BaseModel):
    """What a wallet or the CLI sends: the action's type, its fields and the signature (0x, 65 bytes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str
    message: dict[str, Any]
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$")

    def action(self) -> Action:
        cls = ACTIONS.get(self.type)
        if cls is None:
            raise EconomyError(f"type: unknown action {self.type!r}; one of {', '.join(ACTIONS)}")
        try:
            return cls.model_validate(self.message)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "message"
            raise EconomyError(f"{self.type}.{field}: {first['msg']}") from None


class EconomyDomain(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "Heurist"
    version: str = "1"
    chain_id: int = 31337
    verifying_contract: str | None = None

    def typed_data(self, action: Action) -> dict[str, Any]:
        """The full EIP-712 typed data (what ``eth_signTypedData_v4`` takes)."""
        domain: dict[str, Any] = {"name": self.name, "version": self.version, "chainId": self.chain_id}
        fields = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                  {"name": "chainId", "type": "uint256"}]
        if self.verifying_contract:
            domain["verifyingContract"] = self.verifying_contract
            fields.append({"name": "verifyingContract", "type": "address"})
        message = {name: getattr(action, name) for name, _ in action.types}
        return {"types": {"EIP712Domain": fields, action.primary: [{"name": n, "type": t} for n, t in action.types]},
                "primaryType": action.primary, "domain": domain, "message": message}

    def encoded(self, action: Action) -> SignableMessage:
        return encode_typed_data(full_message=self.typed_data(action))

    def sign(self, wallet: Wallet, action: Action) -> Signed:
        return Signed(type=action.primary, message=action.model_dump(), signature=wallet.sign_encoded(
            self.encoded(action)))

    def verify(self, signed: Signed) -> Action:
        """The action, if its signature recovers to the address it acts for; else ``EconomyError``."""
        action = signed.action()
        signer = recover_encoded(self.encoded(action), signed.signature)
        if signer is None or signer.lower() != action.signer.lower():
            raise EconomyError(f"signature: does not recover to {action.signer_field} {action.signer} on chain "
                               f"{self.chain_id} ({self.name} v{self.version}); sign this exact message with "
                               f"that address's key")
        return action
