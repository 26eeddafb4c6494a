"""The methods wing: distillers that turn a real set (and a teacher) into a distilled set.

``coreset`` (random-real, herding, k-center), ``rded`` (RDED's teacher-scored crops), ``recover`` (SRe2L and
CDA image synthesis). Their CLI is ``python -m rd3fast.distill``.
"""
