# pragma version 0.4.3
# pragma evm-version shanghai
"""
@title esHUE, escrowed HUE
@notice A reward token that only the protocol's contracts may move, fully backed by HUE held here: minting
        esHUE first mints as much HUE to this contract, so the HUE cap bounds HUE and esHUE together. A holder
        converts esHUE to HUE by vesting: `vest` burns the esHUE and opens a vest that releases its HUE
        linearly over 365 days. At all times: HUE held here == esHUE supply + what open vests have not released.
"""

from ethereum.ercs import IERC20

implements: IERC20


interface Mintable:
    def mint(to: address, amount: uint256): nonpayable


event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event Vest:
    account: indexed(address)
    id: uint256
    amount: uint256
    start: uint256

event Release:
    account: indexed(address)
    id: uint256
    amount: uint256

event MinterSet:
    who: indexed(address)
    allowed: bool

event ProtocolSet:
    who: indexed(address)
    allowed: bool

struct Vesting:
    amount: uint256
    released: uint256
    start: uint256

VESTING_S: constant(uint256) = 365 * 86400

name: public(constant(String[32])) = "Escrowed HUE"
symbol: public(constant(String[32])) = "esHUE"
decimals: public(constant(uint8)) = 18

hue: public(address)
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
owner: public(address)
minters: public(HashMap[address, bool])
protocol: public(HashMap[address, bool])
vestCount: public(HashMap[address, uint256])
_vests: HashMap[address, HashMap[uint256, Vesting]]


@deploy
def __init__(hue: address):
    self.hue = hue
    self.owner = msg.sender


@view
@external
def vestingSeconds() -> uint256:
    return VESTING_S


@external
def setMinter(who: address, allowed: bool):
    assert msg.sender == self.owner, "esHUE: not the owner"
    self.minters[who] = allowed
    log MinterSet(who=who, allowed=allowed)


@external
def setProtocol(who: address, allowed: bool):
    assert msg.sender == self.owner, "esHUE: not the owner"
    self.protocol[who] = allowed
    log ProtocolSet(who=who, allowed=allowed)


@external
def mint(to: address, amount: uint256):
    assert self.minters[msg.sender], "esHUE: not a minter"
    extcall Mintable(self.hue).mint(self, amount)  # the backing first; reverts "HUE: cap" past the cap
    self.totalSupply += amount
    self.balanceOf[to] += amount
    log Transfer(sender=empty(address), receiver=to, value=amount)


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert self.balanceOf[sender] >= amount, "esHUE: balance too low"
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    assert self.protocol[msg.sender], "esHUE: transfers only by the protocol's contracts"
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    assert self.protocol[msg.sender], "esHUE: transfers only by the protocol's contracts"
    allowed: uint256 = self.allowance[sender][msg.sender]
    if allowed != max_value(uint256):
        assert allowed >= amount, "esHUE: allowance too low"
        self.allowance[sender][msg.sender] = allowed - amount
    self._transfer(sender, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@view
@external
def vests(account: address, id: uint256) -> (uint256, uint256, uint256):
    v: Vesting = self._vests[account][id]
    return v.amount, v.released, v.start


@view
@internal
def _releasable(account: address, id: uint256) -> uint256:
    v: Vesting = self._vests[account][id]
    elapsed: uint256 = min(block.timestamp - v.start, VESTING_S)
    return v.amount * elapsed // VESTING_S - v.released


@view
@external
def releasable(account: address, id: uint256) -> uint256:
    return self._releasable(account, id)


@external
def vest(amount: uint256) -> uint256:
    assert self.balanceOf[msg.sender] >= amount, "esHUE: balance too low"
    self.balanceOf[msg.sender] -= amount
    self.totalSupply -= amount
    log Transfer(sender=msg.sender, receiver=empty(address), value=amount)
    id: uint256 = self.vestCount[msg.sender]
    self.vestCount[msg.sender] = id + 1
    self._vests[msg.sender][id] = Vesting(amount=amount, released=0, start=block.timestamp)
    log Vest(account=msg.sender, id=id, amount=amount, start=block.timestamp)
    return id


@external
def release(id: uint256) -> uint256:
    assert id < self.vestCount[msg.sender], "esHUE: no such vest"
    amount: uint256 = self._releasable(msg.sender, id)
    self._vests[msg.sender][id].released += amount
    assert extcall IERC20(self.hue).transfer(msg.sender, amount)
    log Release(account=msg.sender, id=id, amount=amount)
    return amount
