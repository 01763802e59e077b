"""Demo data: stores, terminals and members with realistic Chinese names,
phones and birthdays. Deterministic (seeded random) and made in bulk."""

from __future__ import annotations

import random
from datetime import date, timedelta

from django.db import transaction
from django.utils import timezone

from members.models import Member, MemberEvent, Store, TierChange
from members.services import code_secret_new, member_no_allocate, store_get_or_create, terminal_create, tier_entry

STORES = [
    ("SH001", "上海南京西路店", "上海"),
    ("SH002", "上海徐家汇店", "上海"),
    ("BJ001", "北京三里屯店", "北京"),
    ("BJ002", "北京望京店", "北京"),
    ("HZ001", "杭州湖滨店", "杭州"),
    ("GZ001", "广州天河店", "广州"),
    ("SZ001", "深圳万象城店", "深圳"),
    ("CD001", "成都太古里店", "成都"),
]

# Common surnames, roughly by frequency.
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN_FEMALE = "秀英丽敏静燕娟艳芳玲霞婷雪慧琳颖佳怡欣悦梦雨晨思涵萱诗琪瑶妍楠"
GIVEN_MALE = "伟强磊军洋勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭晨博文轩宇哲睿"
MOBILE_PREFIXES = [
    "130",
    "131",
    "132",
    "135",
    "136",
    "137",
    "138",
    "139",
    "150",
    "151",
    "152",
    "155",
    "156",
    "158",
    "159",
    "176",
    "177",
    "180",
    "181",
    "182",
    "185",
    "186",
    "187",
    "188",
    "189",
    "199",
]


def demo_name(rng: random.Random, gender: str) -> str:
    pool = GIVEN_FEMALE if gender == Member.Gender.FEMALE else GIVEN_MALE
    given = "".join(rng.choice(pool) for _ in range(rng.choice((1, 2, 2))))
    return rng.choice(SURNAMES) + given


def demo_phone(rng: random.Random) -> str:
    return f"+86{rng.choice(MOBILE_PREFIXES)}{rng.randrange(10**8):08d}"


@transaction.atomic
def seed_stores_and_terminals() -> tuple[list[Store], list[tuple[str, str]]]:
    stores, keys = [], []
    for code, name, city in STORES:
        store, created = store_get_or_create(code=code, name=name)
        if created:
            store.city = city
            store.save(update_fields=["city", "updated_at"])
            for till in ("till-1", "till-2"):
                terminal, key = terminal_create(store=store, name=till)
                keys.append((str(terminal), key))
        stores.append(store)
    return stores, keys


@transaction.atomic
def seed_members(*, count: int, stores: list[Store], seed: int = 20260101) -> int:
    """Create ``count`` members registered over the last ~3 years. Skips phones taken."""
    rng = random.Random(seed)
    tier = tier_entry()
    now = timezone.now()
    taken = set(Member.objects.values_list("phone", flat=True))
    numbers = member_no_allocate(count)
    channels = [Member.Channel.STORE] * 6 + [Member.Channel.MINI_PROGRAM] * 3 + [Member.Channel.IMPORT]
    rows: list[Member] = []
    for member_no in numbers:
        phone = demo_phone(rng)
        while phone in taken:
            phone = demo_phone(rng)
        taken.add(phone)
        gender = rng.choice([Member.Gender.FEMALE] * 3 + [Member.Gender.MALE] * 2)
        registered = now - timedelta(days=rng.randrange(0, 3 * 365), seconds=rng.randrange(86400))
        age = rng.randrange(18, 70)
        birthday = date(now.year - age, rng.randrange(1, 13), rng.randrange(1, 29))
        rows.append(
            Member(
                member_no=member_no,
                phone=phone,
                name=demo_name(rng, gender),
                gender=gender,
                birthday=birthday,
                registration_store=rng.choice(stores),
                channel=rng.choice(channels),
                marketing_consent=rng.random() < 0.7,
                tier=tier,
                tier_since=registered,
                code_secret=code_secret_new(),
            )
        )
    created = Member.objects.bulk_create(rows, batch_size=2000)
    TierChange.objects.bulk_create(
        [TierChange(member=m, to_tier=tier, reason=TierChange.Reason.ENROLMENT) for m in created], batch_size=2000
    )
    MemberEvent.objects.bulk_create(
        [MemberEvent(member=m, kind=MemberEvent.Kind.ENROLLED, data={"channel": m.channel}) for m in created],
        batch_size=2000,
    )
    # created_at is auto_now_add: spread registrations over time in bulk.
    _spread_registration_dates(created)
    return len(created)


def _spread_registration_dates(members: list[Member]) -> None:
    from django.db import connection

    values = [(m.pk, m.tier_since) for m in members]
    with connection.cursor() as cursor:
        for start in range(0, len(values), 2000):
            chunk = values[start : start + 2000]
            cursor.execute(
                "UPDATE members_member AS m SET created_at = v.at, updated_at = v.at "
                "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) WHERE m.id = v.id",
                [[pk for pk, _ in chunk], [at for _, at in chunk]],
            )
            cursor.execute(
                "UPDATE members_tierchange AS t SET created_at = m.created_at FROM members_member AS m "
                "WHERE t.member_id = m.id AND m.id = ANY(%s)",
                [[pk for pk, _ in chunk]],
            )
            cursor.execute(
                "UPDATE members_memberevent AS e SET created_at = m.created_at FROM members_member AS m "
                "WHERE e.member_id = m.id AND m.id = ANY(%s)",
                [[pk for pk, _ in chunk]],
            )
