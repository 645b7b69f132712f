"""more3s.rollout"""
