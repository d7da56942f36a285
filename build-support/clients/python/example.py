"""Calls the stack from Python with the generated client: CreateUser, then ListOrders until the
user's sign-up order is paid. Exits non-zero if it is not paid within 30 seconds.

    PYTHONPATH=target/python-client python build-support/clients/python/example.py [EMAIL]
"""

import sys
import time
import uuid

import grpc

from order.v1 import order_service_pb2, order_service_pb2_grpc, order_pb2
from user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc


def main() -> int:
    email = sys.argv[1] if len(sys.argv) > 1 else f"py-{uuid.uuid4().hex[:12]}@example.com"
    users = user_service_pb2_grpc.UserServiceStub(grpc.insecure_channel("localhost:50051"))
    orders = order_service_pb2_grpc.OrderServiceStub(grpc.insecure_channel("localhost:50052"))

    created = users.CreateUser(
        user_service_pb2.CreateUserRequest(
            email=email,
            name="Ada from Python",
            plan=user_pb2.PLAN_PRO,
            request_id=str(uuid.uuid4()),
        ),
        metadata=[("x-request-id", f"python-{uuid.uuid4()}")],
        timeout=10,
    )
    print(f"created user {created.user.user_id} <{created.user.email}>")

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = orders.ListOrders(
            order_service_pb2.ListOrdersRequest(user_id=created.user.user_id), timeout=10
        )
        if page.orders and page.orders[0].status == order_pb2.ORDER_STATUS_PAID:
            order = page.orders[0]
            print(
                f"order {order.order_id} {order_pb2.OrderStatus.Name(order.status)}: "
                f"{order.amount_minor / 100:.2f} {order.currency}"
            )
            return 0
        time.sleep(0.1)
    print("the order was not paid within 30 seconds", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
