"""more3s.model"""
