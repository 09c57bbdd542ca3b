# pragma version 0.4.3
# pragma evm-version shanghai
"""
@title HUE, the Heurist token
@notice An ERC-20 capped at 1,000,000,000 HUE on what was ever minted: burning does not make room again,
        as the off-chain book caps total minted (heurist/economy/book.py). Minting is for the minters the
        owner names (the esHUE contract and the RewardsDistributor); anyone may burn their own HUE.
"""

from ethereum.ercs import IERC20

implements: IERC20

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event MinterSet:
    who: indexed(address)
    allowed: bool

CAP: constant(uint256) = 10**27  # 1,000,000,000 HUE of 10**18 base units

name: public(constant(String[32])) = "Heurist"
symbol: public(constant(String[32])) = "HUE"
decimals: public(constant(uint8)) = 18

totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
minted: public(uint256)  # cumulative: every mint adds, no burn subtracts
owner: public(address)
minters: public(HashMap[address, bool])


@deploy
def __init__():
    self.owner = msg.sender


@view
@external
def cap() -> uint256:
    return CAP


@external
def setMinter(who: address, allowed: bool):
    assert msg.sender == self.owner, "HUE: not the owner"
    self.minters[who] = allowed
    log MinterSet(who=who, allowed=allowed)


@external
def mint(to: address, amount: uint256):
    assert self.minters[msg.sender], "HUE: not a minter"
    assert amount <= CAP - self.minted, "HUE: cap"
    self.minted += amount
    self.totalSupply += amount
    self.balanceOf[to] += amount
    log Transfer(sender=empty(address), receiver=to, value=amount)


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert self.balanceOf[sender] >= amount, "HUE: balance too low"
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)


@internal
def _spend(holder: address, spender: address, amount: uint256):
    allowed: uint256 = self.allowance[holder][spender]
    if allowed != max_value(uint256):
        assert allowed >= amount, "HUE: allowance too low"
        self.allowance[holder][spender] = allowed - amount


@internal
def _burn(holder: address, amount: uint256):
    assert self.balanceOf[holder] >= amount, "HUE: balance too low"
    self.balanceOf[holder] -= amount
    self.totalSupply -= amount
    log Transfer(sender=holder, receiver=empty(address), value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    self._spend(sender, msg.sender, amount)
    self._transfer(sender, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def burn(amount: uint256):
    self._burn(msg.sender, amount)


@external
def burnFrom(owner: address, amount: uint256):
    self._spend(owner, msg.sender, amount)
    self._burn(owner, amount)
