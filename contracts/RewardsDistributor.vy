# pragma version 0.4.3
# pragma evm-version shanghai
"""
@title RewardsDistributor, epoch payouts by Merkle proof
@notice The settlement key posts one root per epoch with the epoch's total (the sum of its leaves) and the
        issued and burned figures of its report. Anyone may then claim a leaf (account, amount) for its account
        with a proof, once. The tree is OpenZeppelin's StandardMerkleTree of (address, uint256), built off chain
        by heurist.economy.merkle; the check is OpenZeppelin's MerkleProof.verify. Claims mint: esHUE for an
        epoch >= 0, liquid HUE for epoch -1 (the TGE conversion), so this contract must be a minter of both.
        The claims of an epoch never pay more than its posted total, whatever root was posted.
"""


interface Mintable:
    def mint(to: address, amount: uint256): nonpayable


event RootPosted:
    epoch: indexed(int256)
    root: bytes32
    total: uint256
    issued: uint256
    burned: uint256

event Claimed:
    epoch: indexed(int256)
    account: indexed(address)
    amount: uint256

event SettlerSet:
    settler: indexed(address)

MAX_PROOF: constant(uint256) = 64  # a tree of 2**64 leaves; a real epoch needs about 17 (100,000 payouts)
TGE: constant(int256) = -1

hue: public(address)
eshue: public(address)
settler: public(address)
owner: public(address)

roots: public(HashMap[int256, bytes32])
totals: public(HashMap[int256, uint256])
issued: public(HashMap[int256, uint256])
burned: public(HashMap[int256, uint256])
claimedTotal: public(HashMap[int256, uint256])
claimed: HashMap[int256, HashMap[bytes32, bool]]  # epoch -> OZ leaf hash -> claimed


@deploy
def __init__(hue: address, eshue: address, settler: address):
    self.hue = hue
    self.eshue = eshue
    self.settler = settler
    self.owner = msg.sender


@external
def setSettler(who: address):
    assert msg.sender == self.owner, "RewardsDistributor: not the owner"
    self.settler = who
    log SettlerSet(settler=who)


@external
def post(epoch: int256, root: bytes32, total: uint256, issued: uint256, burned: uint256):
    assert msg.sender == self.settler, "RewardsDistributor: not the settlement key"
    assert root != empty(bytes32), "RewardsDistributor: empty root"
    assert self.roots[epoch] == empty(bytes32), "RewardsDistributor: root already posted"
    self.roots[epoch] = root
    self.totals[epoch] = total
    self.issued[epoch] = issued
    self.burned[epoch] = burned
    log RootPosted(epoch=epoch, root=root, total=total, issued=issued, burned=burned)


@pure
@internal
def _leaf(account: address, amount: uint256) -> bytes32:
    # OZ StandardMerkleTree: keccak256(bytes.concat(keccak256(abi.encode(account, amount))))
    return keccak256(keccak256(abi_encode(account, amount)))


@pure
@internal
def _verify(proof: DynArray[bytes32, MAX_PROOF], root: bytes32, leaf: bytes32) -> bool:
    # OZ MerkleProof.verify: hash each sibling in, the smaller word first
    computed: bytes32 = leaf
    for node: bytes32 in proof:
        if convert(computed, uint256) < convert(node, uint256):
            computed = keccak256(concat(computed, node))
        else:
            computed = keccak256(concat(node, computed))
    return computed == root


@view
@external
def isClaimed(epoch: int256, account: address, amount: uint256) -> bool:
    return self.claimed[epoch][self._leaf(account, amount)]


@external
def claim(epoch: int256, account: address, amount: uint256, proof: DynArray[bytes32, MAX_PROOF]):
    root: bytes32 = self.roots[epoch]
    assert root != empty(bytes32), "RewardsDistributor: no root for this epoch"
    leaf: bytes32 = self._leaf(account, amount)
    assert not self.claimed[epoch][leaf], "RewardsDistributor: already claimed"
    assert self._verify(proof, root, leaf), "RewardsDistributor: bad proof"
    assert amount <= self.totals[epoch] - self.claimedTotal[epoch], "RewardsDistributor: over the epoch's total"
    self.claimed[epoch][leaf] = True
    self.claimedTotal[epoch] += amount
    if epoch == TGE:
        extcall Mintable(self.hue).mint(account, amount)
    else:
        extcall Mintable(self.eshue).mint(account, amount)
    log Claimed(epoch=epoch, account=account, amount=amount)
