"""The ≥ 10-shape workload over users, orders and events used by the advisor's integration test."""

from __future__ import annotations

WORKLOAD = {
    "textbook": (
        "SELECT id, user_id, total FROM orders WHERE created_at > now() - interval '7 days' "
        "AND status = 'pending' ORDER BY created_at DESC"
    ),
    "by_email": "SELECT id, name FROM users WHERE email = 'user4242@example.com'",
    "served_pk": "SELECT email, name FROM users WHERE id = 4242",
    "join": (
        "SELECT o.id, o.total, o.created_at FROM users u JOIN orders o ON o.user_id = u.id "
        "WHERE u.email = 'user17@example.com'"
    ),
    "newest_users": "SELECT id, name FROM users ORDER BY created_at DESC LIMIT 20",
    "total_range": "SELECT count(*) FROM orders WHERE total BETWEEN 100 AND 101",
    "user_recent_status": (
        "SELECT id, total FROM orders WHERE user_id = 77 AND status = 'shipped' ORDER BY created_at DESC LIMIT 5"
    ),
    "live_users_country": (
        "SELECT id, email FROM users WHERE deleted_at IS NULL AND country = 'NZ' ORDER BY name LIMIT 50"
    ),
    "events_device": "SELECT id, kind, n FROM events WHERE device_id = 42 AND kind = 'click'",
    "orders_of_user_range": ("SELECT id FROM orders WHERE user_id = 99 AND created_at >= now() - interval '90 days'"),
}
