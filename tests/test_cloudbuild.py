"""cloudbuild.yaml builds, tags, pushes and annotates exactly the images the deployer derives from
publishedVersion (the server, <prefix>/redis, <prefix>/deployer and <prefix>/tester, each at the version and
MAJOR.MINOR), smoke-tests the server and Redis images before pushing, and verifies the deployer image with mpdev."""

from __future__ import annotations

import re
from typing import Any

import yaml

from deployer.marketplace.expand import project_image
from deployer.marketplace.schema import load_schema
from tests.conftest import ROOT

PREFIX = "registry.example/p/erlmcp"
ANNOTATION = "com.googleapis.cloudmarketplace.product.service.name"


def expanded() -> tuple[str, dict[str, str]]:
    """cloudbuild.yaml's text with the substitutions made (and _REGISTRY=PREFIX), as Cloud Build runs it."""
    text = (ROOT / "cloudbuild.yaml").read_text()
    values = {**yaml.safe_load(text)["substitutions"], "_REGISTRY": PREFIX, "PROJECT_ID": "p"}
    return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), text).replace("$$", "$"), values


def build() -> tuple[dict[str, Any], dict[str, str]]:
    text, values = expanded()
    return yaml.safe_load(text), values


def built_tags(document: dict[str, Any]) -> set[str]:
    return {tag for step in document["steps"] if step["args"][:1] == ["build"]
            for flag, tag in zip(step["args"], step["args"][1:], strict=False) if flag == "--tag"}  # fmt: skip


def derived_images() -> dict[str, str]:
    """What the deployer and Marketplace derive: the schema's images, <prefix>/deployer, the test schema's tester."""
    schema = load_schema(ROOT / "schema.yaml")
    version = schema.published_version
    images = {prop.image or "server": project_image(PREFIX, prop, version) for prop in schema.images
              if prop.projection == "REPO_WITH_REGISTRY"}  # fmt: skip
    images = {name: f"{repo}:{version}" for name, repo in images.items()}
    tester = yaml.safe_load((ROOT / "deployer" / "data-test" / "schema.yaml").read_text())["properties"]
    repository = tester["tester.image.repository"]["default"].replace("$REGISTRY", PREFIX)
    images["tester"] = f"{repository}:{tester['tester.image.tag']['default'].replace('$TAG', version)}"
    images["deployer"] = f"{PREFIX}/deployer:{version}"
    return images


def test_the_version_and_track_defaults_follow_published_version() -> None:
    document, values = build()
    version = load_schema(ROOT / "schema.yaml").published_version
    assert values["_VERSION"] == version
    assert values["_TRACK"] == ".".join(version.split(".")[:2])


def test_the_derived_images_are_the_server_redis_tester_and_deployer() -> None:
    # The tests below cover every derived image: the schema's redis image (sessions.store=redis) is one of them.
    assert sorted(derived_images()) == ["deployer", "redis", "server", "tester"]
    assert derived_images()["redis"] == f"{PREFIX}/redis:{load_schema(ROOT / 'schema.yaml').published_version}"


def test_every_derived_image_is_built_with_both_tags() -> None:
    document, values = build()
    built = built_tags(document)
    for name, image in derived_images().items():
        repo = image.rsplit(":", 1)[0]
        assert image in built, name
        assert f"{repo}:{values['_TRACK']}" in built, name


def dockerfile_targets() -> list[str]:
    """The stage names of the repository's Dockerfile, in order (the last is what a build without --target makes)."""
    text = (ROOT / "Dockerfile").read_text()
    return re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE)


def test_the_server_tester_and_deployer_images_are_targets_of_the_one_dockerfile() -> None:
    document, values = build()
    steps = {step["id"]: step for step in document["steps"]}
    targets = dockerfile_targets()
    assert targets[-1] == "server"  # `docker build .` makes the server
    for image in ("server", "tester", "deployer"):
        args = steps[f"build-{image}"]["args"]
        assert "--file" not in args, image
        assert args[args.index("--target") + 1] == image
        assert image in targets
        assert f"VERSION={values['_VERSION']}" in args, image
        assert args[-1] == ".", image  # the repository is the context
    assert sorted(path.relative_to(ROOT).as_posix() for path in ROOT.glob("*/Dockerfile")) == ["redis/Dockerfile"]


def test_the_deployer_image_is_built_for_this_prefix_and_version() -> None:
    document, values = build()
    [step] = [s for s in document["steps"] if s["id"] == "build-deployer"]
    assert step["args"][step["args"].index("--target") + 1] == "deployer"
    assert f"REGISTRY={PREFIX}" in step["args"]
    assert f"VERSION={values['_VERSION']}" in step["args"]


def test_the_header_comment_lists_exactly_the_images_built() -> None:
    text, values = expanded()
    header = text.split("\nsubstitutions:", 1)[0]
    listed = re.findall(r"^#   (\S+:\S+) .*\(also :(\S+)\)$", header, flags=re.MULTILINE)
    tagged = {image for image, _ in listed} | {f"{image.rsplit(':', 1)[0]}:{track}" for image, track in listed}
    assert tagged == built_tags(build()[0])


def test_the_redis_image_is_built_from_its_own_folder_for_this_version() -> None:
    document, values = build()
    [step] = [s for s in document["steps"] if s["id"] == "build-redis"]
    assert step["args"][step["args"].index("--file") + 1] == "redis/Dockerfile"
    assert step["args"][-1] == "redis"  # the build context: the Dockerfile copies nothing in
    assert f"VERSION={values['_VERSION']}" in step["args"]


def test_every_image_is_pushed_and_annotated_with_the_service_name_at_both_tags() -> None:
    document, values = build()
    steps = {step["id"]: step for step in document["steps"]}
    repos = {image.rsplit(":", 1)[0] for image in derived_images().values()}
    push, annotate = steps["push"]["args"][-1], steps["annotate"]["args"][-1]
    pushed = set(re.findall(r'"([^"]+)"', push.split(";")[0]))
    annotated = set(re.findall(r'"([^"]+)"', annotate.split(";")[0]))
    assert repos <= pushed
    assert repos <= annotated
    assert f'"{values["_VERSION"]}" "{values["_TRACK"]}"' in annotate
    assert f"{ANNOTATION}={values['_SERVICE_NAME']}" in annotate
    assert steps["annotate"]["waitFor"] == ["push"]
    assert "images" not in document  # a final push would overwrite the annotated manifests


def test_nothing_is_pushed_before_the_tester_image_verified_the_server_image() -> None:
    document, _ = build()
    steps = {step["id"]: step for step in document["steps"]}
    assert "verify" in steps["push"]["waitFor"]
    assert "--api-key-file" in steps["verify"]["args"][-1]


def test_nothing_is_pushed_before_the_redis_image_answered_as_the_chart_runs_it() -> None:
    document, values = build()
    steps = {step["id"]: step for step in document["steps"]}
    assert "smoke-redis" in steps["push"]["waitFor"]
    assert steps["smoke-redis"]["waitFor"] == ["build-redis"]
    script = steps["smoke-redis"]["args"][-1]
    for flag in ("--read-only", "--cap-drop ALL", "--user 1000:1000", "--tmpfs /data:uid=1000,gid=1000"):
        assert flag in script, flag
    assert "--requirepass smoke-password" in script
    assert f"{PREFIX}/redis:{values['_VERSION']}" in script
    assert "--env REDISCLI_AUTH=smoke-password erlmcp-redis redis-cli -e ping" in script  # the readiness probe
    assert "grep NOAUTH" in script  # without the password, refused


def test_mpdev_verifies_the_deployer_image() -> None:
    document, values = build()
    [step] = [s for s in document["steps"] if s["id"] == "mpdev-verify"]
    assert f"--deployer={derived_images()['deployer']}" in step["args"][-1]
