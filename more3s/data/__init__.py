"""more3s.data"""
