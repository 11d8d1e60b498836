"""runtime package"""
