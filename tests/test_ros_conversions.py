"""Image <-> numpy and result -> message helpers of aura_ros.conversions, on rosbags message classes."""
import numpy as np
import pytest

from aura_core.result import AuraResult
from aura_ros import conversions
from tests.ros_fixtures import ScenePipeline, image_msg, scenes


@pytest.fixture(scope="module")
def scene():
    return scenes(1, seed=3)[0]


@pytest.mark.parametrize("encoding", sorted(conversions.ENCODINGS))
@pytest.mark.parametrize("pad", [0, 5])
def test_every_encoding_round_trips_to_rgb_honouring_step(factory, scene, encoding, pad):
    msg = image_msg(factory, scene.image, encoding=encoding, pad=pad)
    assert msg.step == msg.width * conversions.ENCODINGS[encoding] + pad
    rgb = conversions.image_to_rgb(msg)
    expected = np.repeat(scene.image[:, :, :1], 3, axis=2) if encoding == "mono8" else scene.image
    assert rgb.shape == scene.image.shape and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, expected)


def test_data_as_bytes_array_and_list_is_read(factory, scene):
    import array

    msg = image_msg(factory, scene.image[:4, :5])
    for data in (bytes(msg.data), array.array("B", bytes(msg.data)), list(msg.data)):
        msg.data = data
        np.testing.assert_array_equal(conversions.image_to_rgb(msg), scene.image[:4, :5])


def test_unknown_encoding_short_data_and_bad_step_are_named(factory, scene):
    msg = image_msg(factory, scene.image)
    msg.encoding = "16UC1"
    with pytest.raises(conversions.ImageConversionError, match="16UC1"):
        conversions.image_to_numpy(msg)
    msg = image_msg(factory, scene.image)
    msg.data = msg.data[:-1]
    with pytest.raises(conversions.ImageConversionError, match="step\\*height"):
        conversions.image_to_numpy(msg)
    msg = image_msg(factory, scene.image)
    msg.step = msg.width * 3 - 1
    with pytest.raises(conversions.ImageConversionError, match="step"):
        conversions.image_to_numpy(msg)


def test_numpy_to_image_rejects_channel_mismatch(factory):
    header = conversions.make_header(factory, 0)
    with pytest.raises(conversions.ImageConversionError, match="rgb8"):
        conversions.numpy_to_image(factory, np.zeros((2, 2), np.uint8), "rgb8", header)


def test_segmentation_masks_are_mono8_crops_of_the_amodal_box_with_the_source_header(factory, scene):
    result = ScenePipeline([scene], objects=3).ask(scene.image, "what is there?")
    header = conversions.make_header(factory, 1_234_567_890_123, "cam_optical")
    msg = conversions.segmentation_msg(factory, header=header, question="what is there?", status=0, result=result)
    assert msg.header is header and msg.answer == result.answer_text and "[SEG]" not in msg.answer
    assert (msg.image_height, msg.image_width) == scene.image.shape[:2]
    assert len(msg.instances) == len(result.instances)
    for instance, truth in zip(msg.instances, result.instances):
        box = instance.amodal_box
        assert box.x_offset + box.width <= msg.image_width and box.y_offset + box.height <= msg.image_height
        assert (box.width, box.height) == (truth.amodal_box.width, truth.amodal_box.height)
        for mask in (instance.amodal_mask, instance.visible_mask):
            assert mask.encoding == "mono8" and (mask.width, mask.height) == (box.width, box.height)
            assert mask.header.stamp.sec == 1234 and mask.header.frame_id == "cam_optical"
            assert set(np.unique(conversions.image_to_numpy(mask))) <= {0, 255}
        visible, amodal = conversions.instance_masks_full(instance, scene.image.shape[:2])
        np.testing.assert_array_equal(amodal, truth.amodal_mask)
        np.testing.assert_array_equal(visible, truth.visible_mask)
        assert instance.phrase == truth.phrase
        assert instance.occlusion_rate == pytest.approx(truth.occlusion_rate, abs=1e-6)


def test_empty_mask_gives_zero_box_and_empty_crop(factory):
    from aura_core.result import AuraInstance

    empty = np.zeros((6, 8), bool)
    result = AuraResult(question="q", answer="nothing [SEG]", image_size=(6, 8), instances=[
        AuraInstance(phrase="x", visible_mask=empty, amodal_mask=empty, occlusion_rate=0.0, visible_score=0, amodal_score=0)])
    header = conversions.make_header(factory, 0)
    instance = conversions.segmentation_msg(factory, header=header, question="q", status=0, result=result).instances[0]
    assert (instance.amodal_box.width, instance.amodal_box.height, instance.amodal_mask.width) == (0, 0, 0)


def test_labels_and_overlay(factory, scene):
    result = ScenePipeline([scene], objects=2).ask(scene.image, "q")
    labels = conversions.visible_labels(result)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_array_equal(labels == 1, result.instances[0].visible_mask & ~result.instances[1].visible_mask)
    picture = conversions.overlay(scene.image, result)
    assert picture.shape == scene.image.shape and picture.dtype == np.uint8
    changed = np.any(picture != scene.image, axis=2)
    assert changed[result.instances[0].visible_mask].mean() > 0.9


def _packed_yuv(rgb: np.ndarray, order: str) -> np.ndarray:
    """RGB -> packed 4:2:2 (BT.601 studio swing) in 'yuyv' or 'uyvy' byte order, chroma of each pixel pair averaged."""
    r, g, b = (rgb[:, :, i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    height, width = y.shape
    u = u.reshape(height, width // 2, 2).mean(axis=2)
    v = v.reshape(height, width // 2, 2).mean(axis=2)
    y0, y1 = y[:, 0::2], y[:, 1::2]
    planes = (y0, u, y1, v) if order == "yuyv" else (u, y0, v, y1)
    return np.clip(np.rint(np.stack(planes, axis=2)), 0, 255).astype(np.uint8).reshape(height, width, 2)


@pytest.mark.parametrize("encoding,order", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuyv", "yuyv"), ("yuv422_yuy2", "yuyv")])
def test_packed_yuv422_from_v4l2_cameras_is_converted_to_rgb(factory, encoding, order):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :2] = (200, 30, 30)  # pixel pairs of one colour, so 4:2:2 chroma loses nothing
    rgb[:, 2:4] = (30, 200, 30)
    rgb[:, 4:] = (90, 90, 220)
    packed = _packed_yuv(rgb, order)
    header = conversions.make_header(factory, 0)
    msg = factory.make("sensor_msgs/msg/Image", header=header, height=4, width=6, encoding=encoding, is_bigendian=0,
                       step=12 + 3, data=np.concatenate([packed.reshape(4, 12), np.zeros((4, 3), np.uint8)], axis=1).reshape(-1))
    out = conversions.image_to_rgb(msg)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).max() <= 3
    msg.width = 5
    with pytest.raises(conversions.ImageConversionError, match="odd"):
        conversions.image_to_rgb(msg)


@pytest.mark.parametrize("alias,native", [("8UC1", "mono8"), ("8UC3", "bgr8"), ("8UC4", "bgra8")])
def test_opencv_type_names_are_read_as_their_layouts(factory, scene, alias, native):
    msg = image_msg(factory, scene.image, encoding=native)
    expected = conversions.image_to_rgb(msg)
    msg.encoding = alias
    np.testing.assert_array_equal(conversions.image_to_rgb(msg), expected)


def test_instance_ids_are_their_values_in_visible_labels(factory, scene):
    result = ScenePipeline([scene], objects=3).ask(scene.image, "q")
    msg = conversions.segmentation_msg(factory, header=conversions.make_header(factory, 0), question="q", status=0,
                                       result=result, request_id="r-1")
    labels = conversions.visible_labels(result)
    assert msg.request_id == "r-1"
    assert [inst.id for inst in msg.instances] == list(range(1, len(result.instances) + 1))
    for inst, truth in zip(msg.instances, result.instances):
        only_mine = truth.visible_mask & np.all([~o.visible_mask for o in result.instances[int(inst.id):]], axis=0) \
            if int(inst.id) < len(result.instances) else truth.visible_mask
        assert np.all(labels[only_mine] == inst.id)
