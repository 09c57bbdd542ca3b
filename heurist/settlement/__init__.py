"""Settlement on an EVM chain: the HUE, esHUE and RewardsDistributor contracts and the code that drives them.

Why on chain at all. The economy (heurist.economy) closes each epoch off chain with one Merkle root of its payouts;
putting that root on chain lets every miner and staker claim its own leaf with its proof, without trusting the
operators with their balances. What stays off chain is the bookkeeping that makes the root (points, stakes,
emission); what is on chain is the root, the epoch's total, issued and burned figures, and the tokens themselves.

``artifacts`` loads the compiled contracts shipped in heurist/settlement/build (and checks them against the sources);
no module here imports torch.
"""
