"""more3s.encoder"""
